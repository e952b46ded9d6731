"""SPair-71k (semantic keypoint correspondence) -> patchlens layout.

Official tree (``SPair-71k`` of SPair-71k.tar.gz; Min et al. 2019)::

    JPEGImages/<category>/<name>.jpg
    PairAnnotation/{trn,val,test}/<pair>.json   fields used: src_imname, trg_imname, category,
        src_kps, trg_kps (lists of [x, y] in pixels of the original images, row i of both is
        the same semantic keypoint), trg_bndbox [x0, y0, x1, y1], kps_ids and pair_id when
        present

Converted: each image that appears in a selected pair is one manifest row of split ``pair``
(``labels`` = its category id); ``keypoints.csv`` has one row per keypoint of each pair, with the
target box copied as published. The reference evaluation (Min et al., HPF/DHPF code;
Teaching Matters follows it) counts a keypoint as correct when its error is within
alpha * max(x1 - x0, y1 - y0) of that box, so the box is stored unchanged, not made
pixel-exclusive. classes.csv: the 18 categories in alphabetical order (ids 0..17).

Parameters: ``split`` (``test``; ``trn``/``train``, ``val``, ``test``), ``max_pairs`` (seeded draw),
``categories`` (restrict to these; default all), ``seed`` (0).
"""
from __future__ import annotations

import json
from pathlib import Path

from patchlens.data.download import place_file
from patchlens.data.layout import check_count, image_size, subsample, write_layout
from patchlens.errors import ConfigError, DataError
from patchlens.params import merge_params

SPAIR_CATEGORIES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                    "chair", "cow", "dog", "horse", "motorbike", "person", "pottedplant",
                    "sheep", "train", "tvmonitor")
SPLIT_DIRS = {"trn": "trn", "train": "trn", "val": "val", "test": "test"}
DEFAULT_PARAMS = {"split": "test", "max_pairs": None, "categories": None, "seed": 0}
_FIELDS = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox")


def pair_keypoints(ann: dict, pair: str, src_image: str, trg_image: str) -> list[dict]:
    """keypoints.csv rows of one SPair pair annotation (fields as in the module doc).

    ``kp`` is the category keypoint id from ``kps_ids`` when given, else the row index.
    Raises ValueError when the source and target keypoint lists differ in length or a
    keypoint is not an [x, y] pair.
    """
    src, trg = ann["src_kps"], ann["trg_kps"]
    if len(src) != len(trg):
        raise ValueError(f"{len(src)} source but {len(trg)} target keypoints")
    kp_ids = ann.get("kps_ids")
    if kp_ids is None or len(kp_ids) != len(src):
        kp_ids = range(len(src))
    x0, y0, x1, y1 = (float(v) for v in ann["trg_bndbox"])
    rows = []
    for kp, s, t in zip(kp_ids, src, trg):
        if len(s) != 2 or len(t) != 2:
            raise ValueError(f"keypoint {kp} is not an [x, y] pair")
        rows.append({"pair": pair, "src_image": src_image, "trg_image": trg_image, "kp": int(kp),
                     "src_x": float(s[0]), "src_y": float(s[1]),
                     "trg_x": float(t[0]), "trg_y": float(t[1]),
                     "trg_x0": x0, "trg_y0": y0, "trg_x1": x1, "trg_y1": y1})
    return rows


def _load(path: Path) -> dict:
    try:
        ann = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable pair annotation ({' '.join(str(exc).split())}); "
                        "re-extract the archive") from None
    missing = [k for k in _FIELDS if k not in ann]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}; not an SPair-71k pair "
                        "annotation")
    if ann["category"] not in SPAIR_CATEGORIES:
        raise DataError(f"{path}: unknown category {ann['category']!r}; expected one of the 18 "
                        "SPair-71k categories")
    return ann


def convert(root: str | Path, out_dir: str | Path, params: dict | None = None) -> None:
    """Convert the SPair-71k tree at ``root`` into the patchlens layout in ``out_dir``.

    Raises DataError naming the file when the split has no pair annotations, an annotation is
    malformed, or a referenced image is missing.
    """
    p = merge_params(params, DEFAULT_PARAMS, "spair71k params")
    max_pairs = check_count(p["max_pairs"], "max_pairs", "spair71k params")
    if p["split"] not in SPLIT_DIRS:
        raise ConfigError(f"spair71k params: split {p['split']!r} is unknown; use trn, val or "
                          "test")
    cats = p["categories"]
    cats = [cats] if isinstance(cats, str) else cats
    if cats is not None and set(cats) - set(SPAIR_CATEGORIES):
        raise ConfigError(f"spair71k params: unknown categories "
                          f"{sorted(set(cats) - set(SPAIR_CATEGORIES))}; known: "
                          f"{', '.join(SPAIR_CATEGORIES)}")
    root, out_dir = Path(root), Path(out_dir)
    ann_dir = root / "PairAnnotation" / SPLIT_DIRS[p["split"]]
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise DataError(f"{ann_dir}: no pair annotations; the SPair-71k tree is incomplete: "
                        "re-extract the archive")
    if cats is not None:  # official names end in ':<category>'; read the JSON when unsure
        files = [f for f in files if f.stem.rsplit(":", 1)[-1] in cats
                 or (":" not in f.stem and _load(f)["category"] in cats)]
    files = subsample(files, max_pairs, p["seed"], salt=SPLIT_DIRS[p["split"]])
    images: dict[str, dict] = {}
    keypoints: list[dict] = []
    pairs: set[str] = set()
    for path in files:
        ann = _load(path)
        cat = ann["category"]
        pair = f"{int(ann['pair_id']):06d}" if "pair_id" in ann else path.stem.replace(":", "-")
        if pair in pairs:
            raise DataError(f"{path}: pair id {pair} appears twice in {ann_dir}")
        pairs.add(pair)
        ids = []
        for key in ("src_imname", "trg_imname"):
            name = str(ann[key])
            src = root / "JPEGImages" / cat / name
            image = f"{cat}-{Path(name).stem}"
            if image not in images:
                if not src.is_file():
                    raise DataError(f"{src}: missing, referenced by {path}; the SPair-71k tree "
                                    "is incomplete: re-extract the archive")
                height, width = image_size(src)
                rel = f"images/{cat}/{name}"
                place_file(src, out_dir / rel)
                images[image] = {"image": image, "path": rel, "split": "pair",
                                 "height": height, "width": width,
                                 "labels": str(SPAIR_CATEGORIES.index(cat))}
            ids.append(image)
        try:
            keypoints += pair_keypoints(ann, pair, *ids)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: bad keypoints ({exc}); not a valid SPair-71k pair "
                            "annotation") from None
    manifest = [images[k] for k in sorted(images)]
    write_layout(out_dir, manifest, SPAIR_CATEGORIES, keypoints=keypoints)
