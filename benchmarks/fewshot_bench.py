"""Few-shot segmentation of one layer and one seed at VOC's real shapes, every variant, both heads.

Generated inputs (written once under ``--work``): a VOC-like data set (21 classes, 375 x 500
semantic masks with void borders, ``--n-train`` support-split and ``--n-query`` query images),
a ViT-S/16-at-448-px feature file (28 x 28 = 784 patches, C = 384, float16; class prototypes plus
noise plus a few high-variance channels, as MAE's) and the channel statistics of the support
split. A support draw of 5 shots for 20 classes takes about 100 images (~78 k patches).

``--path today`` scores the variants one at a time through the task's ``run`` (the evaluator's
contract before issue 20: one transform per call); ``--path joint`` through
:func:`patchlens.evaluate.score_layers` (one call per layer for every variant, one similarity
product for raw and every drop{m}). Today's code itself is measured by running ``--path today``
with a checkout of the base commit first on the path, e.g.::

    git archive 0d9fb74 patchlens | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base python benchmarks/fewshot_bench.py --path today
    PYTHONPATH=$PWD      python benchmarks/fewshot_bench.py --path joint

Prints the wall time and the mIoU of every (variant, head), so that the two paths' scores can be
compared line by line (``--json`` writes them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: a base checkout given there wins

VARIANTS = ["raw", "zscore", "drop1", "drop2", "drop4", "drop8", "drop16"]
H, W = 375, 500          # a typical VOC image
GRID = (28, 28)          # ViT-S/16 at 448 px
K = 21                   # VOC: background + 20 classes


def label_map(rng) -> np.ndarray:
    """(H, W) uint8: background with one or two rectangular objects, void (255) borders."""
    m = np.zeros((H, W), np.uint8)
    for c in rng.choice(np.arange(1, K), size=int(rng.integers(1, 3)), replace=False):
        y0, x0 = int(rng.integers(0, H - 120)), int(rng.integers(0, W - 160))
        y1, x1 = y0 + int(rng.integers(80, 250)), x0 + int(rng.integers(100, 330))
        m[y0:y1, x0:x1] = 255
        m[y0 + 4:y1 - 4, x0 + 4:x1 - 4] = c
    return m


def generate(work: Path, n_train: int, n_query: int, channels: int, seed: int = 0) -> None:
    """Write the data set, the feature file and the channel statistics under ``work``."""
    from patchlens.evaluation.upsample import resize_nearest
    from patchlens.features.channel_stats import write_stats
    from patchlens.features.store import write_features

    rng = np.random.default_rng(seed)
    data = work / "data"
    (data / "semantic").mkdir(parents=True, exist_ok=True)
    (data / "images").mkdir(exist_ok=True)
    grey = data / "images" / "grey.png"
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(grey)
    protos = rng.standard_normal((K, channels)).astype(np.float32)
    loud = rng.choice(channels, 8, replace=False)  # MAE-like channels of large variance
    rows, tokens = [], []
    for i in range(n_train + n_query):
        im, split = f"im{i:04d}", "train" if i < n_train else "val"
        m = label_map(rng)
        Image.fromarray(m).save(data / "semantic" / f"{im}.png")
        rows.append({"image": im, "path": "images/grey.png", "split": split,
                     "semantic": f"semantic/{im}.png", "instance": "", "sequence": "",
                     "frame": -1, "height": H, "width": W, "labels": "", "uv": ""})
        g = resize_nearest(np.where(m == 255, 0, m), GRID).reshape(-1)
        x = 0.6 * protos[g] + rng.standard_normal((g.size, channels)).astype(np.float32)
        x[:, loud] *= 30.0
        tokens.append(x.astype(np.float16))
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    pd.DataFrame({"class": np.arange(K), "name": [f"c{c}" for c in range(K)]}).to_csv(
        data / "classes.csv", index=False)
    tok = np.stack(tokens)[:, None]                                    # (n, 1, P, C)
    attrs = {"model": "generated", "patch_size": 16, "input_size": np.array([448, 448])}
    write_features(work / "features.h5", tok, [r["image"] for r in rows], GRID, attrs)
    sup = tok[:n_train, 0].astype(np.float64).reshape(-1, channels)
    write_stats(work / "variance.h5", [0], sup.mean(0)[None], sup.var(0)[None], {})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", choices=["today", "joint"], required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fewshot_bench"))
    ap.add_argument("--n-train", type=int, default=160, help="support-split pool")
    ap.add_argument("--n-query", type=int, default=200)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--query-cut", type=int, help="score only the first N query images")
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    ap.add_argument("--heads", nargs="+", default=["knn", "linear"])
    ap.add_argument("--device", default="cpu", help="joint path: where the k-NN and the "
                    "per-pixel work run (cuda)")
    ap.add_argument("--json", type=Path, help="write {variant/head: mIoU, seconds} here")
    args = ap.parse_args(argv)
    stamp = args.work / f"inputs-{args.n_train}-{args.n_query}-{args.channels}.done"
    if not stamp.exists():
        generate(args.work, args.n_train, args.n_query, args.channels)
        stamp.touch()

    import patchlens
    from patchlens.data.dataset import Dataset
    from patchlens.evaluate import make_transform, score_layers  # in both versions
    from patchlens.features.store import FeatureStore
    from patchlens.tasks.registry import get_task

    spec = get_task("fewshot_seg")
    params = {"seeds": [0], "heads": list(args.heads)}
    ds = Dataset(args.work / "data")
    if args.query_cut:
        ds.manifest.loc[ds.split("val")[args.query_cut:], "split"] = "unused"
    transforms = {v: make_transform(v, args.work / "variance.h5") for v in args.variants}
    t0 = time.perf_counter()
    with FeatureStore(args.work / "features.h5") as store:
        if args.path == "joint":
            from patchlens.evaluate import VariantSpecs

            specs = VariantSpecs(args.variants, args.work / "variance.h5")
            tables, _, _ = score_layers(spec, store, ds, specs, params, device=args.device)
        else:
            if hasattr(store, "layer_view"):
                view = store.layer_view(0)
            else:  # the base commit: the view was a class of patchlens.evaluate
                from patchlens.evaluate import LayerView

                view = LayerView(store, 0)
            tables = {v: spec.run(view, ds, t, params, layers=[0], units=[])
                      for v, t in transforms.items()}
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "path": args.path, "code": str(Path(patchlens.__file__).parent)}
    print(f"{args.path} ({out['code']}): {seconds:.1f} s for {len(args.variants)} variant(s), "
          f"heads {' '.join(args.heads)}")
    for v, t in tables.items():
        for _, r in t.iterrows():
            out[f"{v}/{r['metric']}"] = float(r["value"])
            print(f"  {v:7s} {r['metric']:12s} {r['value']:.8f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
