"""Writing the ``scenes`` data set: image, mask, uv and depth files
(:mod:`.depth`), then the layout tables (manifest
last). See :mod:`patchlens.data.scenes`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from patchlens.data.layout import write_depth_png, write_layout
from patchlens.data.scenes.depth import depth_map
from patchlens.data.scenes.params import resolve_params
from patchlens.data.scenes.render import class_names, identity_table, make_identities
from patchlens.data.scenes.splits import (_split_crop, _split_gallery, _split_pair, _split_train,
                                          _split_val, _split_video)
from patchlens.io import write_csv, write_json


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _object_rows(rec: dict) -> list[dict]:
    inst = rec["inst"]
    H, W = inst.shape
    counts = np.bincount(inst.ravel(), minlength=256)
    rows = []
    for k, d in sorted(rec["ident"].items()):
        if counts[k] == 0:  # fully occluded in this frame
            continue
        ys, xs = np.nonzero(inst == k)
        rows.append(dict(image=rec["image"], instance=k, **{"class": d.cls}, identity=d.id,
                         area_frac=round(float(counts[k]) / (H * W), 8),
                         x0=int(xs.min()), y0=int(ys.min()), x1=int(xs.max()) + 1,
                         y1=int(ys.max()) + 1))
    return rows


def _labels(sem: np.ndarray) -> str:
    counts = np.bincount(sem.ravel(), minlength=256)[1:255]
    present = np.nonzero(counts)[0]
    order = present[np.lexsort((present, -counts[present]))]
    return " ".join(str(int(c) + 1) for c in order)


def _write_record(out: Path, rec: dict) -> dict:
    i = rec["image"]
    paths = {"path": f"images/{i}.png", "semantic": f"semantic/{i}.png",
             "instance": f"instance/{i}.png", "uv": f"uv/{i}.npy", "depth": f"depth/{i}.png"}
    Image.fromarray(rec["rgb"], "RGB").save(out / paths["path"], format="PNG")
    Image.fromarray(rec["sem"], "L").save(out / paths["semantic"], format="PNG")
    Image.fromarray(rec["inst"], "L").save(out / paths["instance"], format="PNG")
    np.save(out / paths["uv"], rec["uv"], allow_pickle=False)
    H, W = rec["sem"].shape
    write_depth_png(depth_map((H, W), rec["placed"]), out / paths["depth"])
    return dict(image=i, path=paths["path"], split=rec["split"], semantic=paths["semantic"],
                instance=paths["instance"], sequence=rec["sequence"], frame=rec["frame"],
                height=H, width=W, labels=_labels(rec["sem"]), uv=paths["uv"],
                depth=paths["depth"])


def generate_scenes(out_dir, params: dict | None = None) -> None:
    """Generate the ``scenes`` data set into ``out_dir`` (layout of :mod:`patchlens.data.dataset`
    plus ``identities.csv`` and the resolved ``params.json``).

    Deterministic: every split draws from its own ``numpy`` Generator seeded with
    ``(seed, split index)``, so changing one split's size leaves the other splits unchanged.
    """
    p = resolve_params(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.csv").unlink(missing_ok=True)
    for sub in ("images", "semantic", "instance", "uv", "depth"):
        (out / sub).mkdir(exist_ok=True)

    def rng(k):
        return np.random.default_rng([p["seed"], k])

    idents = make_identities(p, rng(0))
    kp_rows: list[dict] = []
    splits = [_split_train(rng(1), p, idents), _split_val(rng(2), p, idents),
              _split_crop(rng(3), p, idents), _split_gallery(rng(4), p, idents),
              _split_video(rng(5), p, idents), _split_pair(rng(6), p, idents, kp_rows)]
    manifest, objects = [], []
    for gen in splits:
        for rec in gen:
            manifest.append(_write_record(out, rec))
            objects.extend(_object_rows(rec))

    write_csv(identity_table(idents), out / "identities.csv")
    write_json(p, out / "params.json")
    # classes, objects, keypoints, then the manifest last (the layout every converter writes)
    write_layout(out, manifest, class_names(p), objects, kp_rows)
