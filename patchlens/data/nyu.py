"""NYU Depth v2, labelled subset (1,449 RGB-D images of indoor scenes) -> patchlens layout.

Official files (Silberman et al., ECCV 2012, "Indoor Segmentation and Support Inference from
RGBD Images"; https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html)::

    nyu_depth_v2_labeled.mat   MATLAB v7.3 = HDF5 (h5py reads it); MATLAB's column-major arrays
                               appear transposed: ``images`` (1449, 3, 640, 480) uint8 and
                               ``depths`` (1449, 640, 480) float32 metres (in-painted, so every
                               pixel has a value); image i is ``images[i].transpose(2, 1, 0)``
                               (480, 640, 3) and ``depths[i].T`` (480, 640)
    splits.mat                 the official split: ``trainNdxs`` (795) and ``testNdxs`` (654),
                               1-based image numbers (a MATLAB v5 file scipy reads; a v7.3 one
                               is read with h5py)

Converted: image ``nyu_{k:04d}`` (``k`` the official 1-based number), split ``train`` or
``test``, RGB PNG (lossless) and depth as the layout's 16-bit PNG in millimetres
(:func:`patchlens.data.layout.write_depth_png`); no masks; classes.csv has one ``scene`` class.

Parameters: ``splits`` (default ``[train, test]``), ``max_images`` (per split, seeded draw),
``seed`` (0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from patchlens.data.layout import check_count, subsample, write_depth_png, write_layout
from patchlens.errors import ConfigError, DataError
from patchlens.io import atomic_path
from patchlens.params import merge_params

LABELED = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
DEFAULT_PARAMS = {"splits": ["train", "test"], "max_images": None, "seed": 0}


def read_splits(path: Path) -> dict[str, list[int]]:
    """{"train": [...], "test": [...]}: the official 1-based image numbers of ``splits.mat``."""
    if not path.is_file():
        raise DataError(f"{path}: missing; download the official splits.mat beside {LABELED}")
    try:
        import scipy.io

        mat = scipy.io.loadmat(path)
    except NotImplementedError:  # MATLAB v7.3: HDF5
        import h5py

        with h5py.File(path, "r") as f:
            mat = {k: np.asarray(f[k]) for k in SPLIT_KEYS.values() if k in f}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({' '.join(str(exc).split())}); download the "
                        "official splits.mat again") from None
    missing = [k for k in SPLIT_KEYS.values() if k not in mat]
    if missing:
        raise DataError(f"{path}: has no {', '.join(missing)}; not the official NYU Depth v2 "
                        "splits.mat")
    return {s: [int(v) for v in np.asarray(mat[k]).ravel()] for s, k in SPLIT_KEYS.items()}


def _write_png(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(tmp, format="PNG")


def convert(root: str | Path, out_dir: str | Path, params: dict | None = None) -> None:
    """Convert the two official files in ``root`` into the patchlens layout in ``out_dir``.

    Raises DataError naming the file when it is missing, not HDF5, lacks ``images``/``depths``,
    has inconsistent shapes, or the split lists an image number it does not hold."""
    import h5py

    where = "nyu_depth_v2 params"
    p = merge_params(params, DEFAULT_PARAMS, where)
    max_images = check_count(p["max_images"], "max_images", where)
    splits = [p["splits"]] if isinstance(p["splits"], str) else list(p["splits"])
    unknown = [s for s in splits if s not in SPLIT_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown split(s) {unknown}; use train and/or test")
    root, out_dir = Path(root), Path(out_dir)
    listing = read_splits(root / SPLITS_FILE)
    path = root / LABELED
    if not path.is_file():
        raise DataError(f"{path}: missing; download the official {LABELED}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not an HDF5 (MATLAB v7.3) file ({' '.join(str(exc).split())});"
                        " delete it and download it again") from None
    manifest = []
    with f:
        if "images" not in f or "depths" not in f:
            raise DataError(f"{path}: has no 'images'/'depths' dataset; not {LABELED}")
        images, depths = f["images"], f["depths"]
        n = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3 or depths.shape != (n, *images.shape[2:]):
            raise DataError(f"{path}: images {images.shape} and depths {depths.shape} do not "
                            "match (expected (N, 3, W, H) and (N, W, H)); not the official file")
        for split in splits:
            numbers = subsample(listing[split], max_images, p["seed"], salt=split)
            bad = [k for k in numbers if not 1 <= k <= n]
            if bad:
                raise DataError(f"{root / SPLITS_FILE}: image number {bad[0]} is outside 1..{n} "
                                f"of {path}; the two files do not belong together")
            for k in numbers:
                rgb = np.asarray(images[k - 1]).transpose(2, 1, 0)        # (H, W, 3)
                depth = np.asarray(depths[k - 1], np.float32).T            # (H, W) metres
                image = f"nyu_{k:04d}"
                rel = {"path": f"images/{image}.png", "depth": f"depth/{image}.png"}
                _write_png(rgb, out_dir / rel["path"])
                (out_dir / "depth").mkdir(parents=True, exist_ok=True)
                write_depth_png(depth, out_dir / rel["depth"])
                manifest.append({"image": image, "split": split, **rel,
                                 "height": rgb.shape[0], "width": rgb.shape[1]})
    write_layout(out_dir, manifest, ["scene"])
