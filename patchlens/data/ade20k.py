"""ADE20K SceneParsing (MIT Scene Parsing Benchmark, 150 classes) -> patchlens layout.

Official tree (``ADEChallengeData2016`` of ADEChallengeData2016.zip; Zhou et al., CVPR 2017
"Scene Parsing through ADE20K Dataset")::

    images/{training,validation}/ADE_*.jpg
    annotations/{training,validation}/ADE_*.png   8-bit, 0 = other / void, 1..150 = the classes
    objectInfo150.txt                               class names (tab-separated, last column)

Converted: split ``train`` (training, 20,210 images) and ``val`` (validation, 2,000); the
annotation becomes the ``semantic`` mask with class index = official id - 1 (0..149) and the
official 0 ("other objects", not scored by the benchmark) as void (255), so every evaluator
ignores it as the benchmark does; ``labels`` = classes present, largest area first;
classes.csv = the 150 names from ``objectInfo150.txt`` (first synonym; ``class_<id>`` when the
file is absent). No instance masks.

Parameters: ``splits`` (default ``[train, val]``), ``max_images`` (per split, seeded draw),
``seed`` (0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from patchlens.data.dataset import VOID
from patchlens.data.download import place_file
from patchlens.data.layout import (check_count, image_size, read_index_png, subsample,
                                   write_index_png, write_layout)
from patchlens.errors import ConfigError, DataError
from patchlens.params import merge_params

N_CLASSES = 150
SPLIT_DIRS = {"train": "training", "val": "validation"}
DEFAULT_PARAMS = {"splits": ["train", "val"], "max_images": None, "seed": 0}


def class_names(root: Path) -> list[str]:
    """The 150 class names of ``objectInfo150.txt`` (or ``.csv``), in id order."""
    for name, sep in (("objectInfo150.txt", "\t"), ("objectInfo150.csv", ",")):
        path = root / name
        if path.is_file():
            rows = [line.split(sep) for line in path.read_text().splitlines()[1:] if line.strip()]
            names = [r[-1].strip().strip('"').split(";")[0].strip() for r in rows]
            if len(names) != N_CLASSES:
                raise DataError(f"{path}: {len(names)} classes listed, expected {N_CLASSES}; "
                                "re-extract the archive")
            return names
    return [f"class_{i}" for i in range(1, N_CLASSES + 1)]


def to_semantic(annotation: np.ndarray) -> np.ndarray:
    """Official ids (0 other, 1..150) -> patchlens class indices (0..149, void 255)."""
    a = np.asarray(annotation, np.int64)
    if a.max(initial=0) > N_CLASSES:
        raise ValueError(f"annotation holds id {int(a.max())} > {N_CLASSES}")
    return np.where(a == 0, VOID, a - 1).astype(np.uint8)


def classes_present(semantic: np.ndarray) -> list[int]:
    """Class indices in a converted mask, largest pixel area first (ties: lower index)."""
    counts = np.bincount(semantic.ravel(), minlength=256)[:N_CLASSES]
    present = np.flatnonzero(counts)
    return present[np.lexsort((present, -counts[present]))].tolist()


def convert(root: str | Path, out_dir: str | Path, params: dict | None = None) -> None:
    """Convert the ADEChallengeData2016 tree at ``root`` into the patchlens layout in
    ``out_dir``; DataError naming the file when an image lacks its annotation or sizes differ."""
    p = merge_params(params, DEFAULT_PARAMS, "ade20k params")
    max_images = check_count(p["max_images"], "max_images", "ade20k params")
    splits = [p["splits"]] if isinstance(p["splits"], str) else list(p["splits"])
    bad = [s for s in splits if s not in SPLIT_DIRS]
    if bad:
        raise ConfigError(f"ade20k params: splits {bad} unknown; expected {list(SPLIT_DIRS)}")
    root, out_dir = Path(root), Path(out_dir)
    manifest = []
    for split in splits:
        folder = root / "images" / SPLIT_DIRS[split]
        ids = sorted(f.stem for f in folder.glob("*.jpg"))
        if not ids:
            raise DataError(f"{folder}: no .jpg images; the tree is incomplete: re-extract the "
                            "archive")
        for image in subsample(ids, max_images, p["seed"], salt=split):
            src = folder / f"{image}.jpg"
            ann = root / "annotations" / SPLIT_DIRS[split] / f"{image}.png"
            if not ann.is_file():
                raise DataError(f"{ann}: missing for image {src}; re-extract the archive")
            height, width = image_size(src)
            try:
                semantic = to_semantic(read_index_png(ann))
            except ValueError as exc:
                raise DataError(f"{ann}: {exc}; re-extract the archive") from None
            if semantic.shape != (height, width):
                raise DataError(f"{ann}: mask is {semantic.shape[1]}x{semantic.shape[0]} but the "
                                f"image is {width}x{height}; re-extract the archive")
            dst = {"path": f"images/{image}.jpg", "semantic": f"semantic/{image}.png"}
            place_file(src, out_dir / dst["path"])
            write_index_png(semantic, out_dir / dst["semantic"])
            manifest.append({"image": image, "split": split, **dst, "height": height,
                             "width": width,
                             "labels": " ".join(map(str, classes_present(semantic)))})
    write_layout(out_dir, manifest, class_names(root))
