"""Writing the patchlens data set layout: the helpers every converter shares.

The layout itself (``manifest.csv``, ``classes.csv``, ``objects.csv``, ``keypoints.csv``, masks)
is defined in :mod:`patchlens.data.dataset`; the converters (:mod:`patchlens.data.voc`,
:mod:`~patchlens.data.davis`, :mod:`~patchlens.data.spair`, :mod:`~patchlens.data.imageset`)
read an official tree and write it with these: count parameters, seeded subsampling, list files,
index-PNG masks, image sizes and the layout tables (manifest last, so a half-converted directory
never looks complete). Parameter merging is :func:`patchlens.params.merge_params`.
"""
from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from patchlens.data.dataset import (KEYPOINT_COLUMNS, MANIFEST_COLUMNS, OBJECT_COLUMNS,
                                    depth_problem, depth_to_png, mask_problem)
from patchlens.errors import ConfigError, DataError
from patchlens.io import atomic_path, write_csv


def check_count(value: Any, key: str, where: str) -> int | None:
    """A positive int or None (no limit); ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer or null, got {value!r}")
    return int(value)


def subsample(items: Sequence, n: int | None, seed: int, salt: str = "") -> list:
    """At most ``n`` of ``items`` drawn without replacement, kept in their original order.

    Deterministic: the generator is seeded with ``(seed, crc32(salt))``, so each split (salt)
    gets its own reproducible draw, independent of what else is converted.
    """
    items = list(items)
    if n is None or n >= len(items):
        return items
    rng = np.random.default_rng([int(seed), zlib.crc32(salt.encode())])
    keep = np.sort(rng.choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


def read_list(path: Path) -> list[str]:
    """Non-empty stripped lines of a list file (ImageSets); DataError when missing."""
    if not path.is_file():
        raise DataError(f"{path}: list file missing; the tree is incomplete: re-extract the "
                        "archive (or fix params.root)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def open_image(path: Path):
    """The PIL image at ``path``, closed on exit; a missing or unreadable file (also when the
    pixels are decoded inside the block) raises DataError naming it."""
    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError:
        raise DataError(f"{path}: missing; the tree is incomplete: re-extract the archive") \
            from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable image ({' '.join(str(exc).split())}); re-extract "
                        "the archive") from None


def read_index_png(path: Path) -> np.ndarray:
    """uint8 (H, W) indices of a palette ("P") or grey ("L") PNG, the palette ignored."""
    with open_image(path) as im:
        if im.mode not in ("P", "L"):
            raise DataError(f"{path}: mode {im.mode} PNG, expected an index (palette) PNG; "
                            "re-extract the official archive")
        return np.asarray(im, dtype=np.uint8).copy()


def write_index_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 (H, W) index mask as a grey PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(
            tmp, format="PNG")


def write_depth_png(depth: np.ndarray, path: Path) -> None:
    """Write metric depth (H, W) in metres as the layout's 16-bit millimetre PNG (0 = no
    measurement: NaN, inf, <= 0), atomically (:func:`patchlens.data.dataset.depth_to_png`)."""
    with atomic_path(path) as tmp:
        Image.fromarray(depth_to_png(depth)).save(tmp, format="PNG")


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header; DataError when missing or unreadable."""
    with open_image(path) as im:
        width, height = im.size
    return height, width


def write_layout(out_dir: str | os.PathLike, manifest: Iterable[dict], classes: Sequence[str],
                 objects: Iterable[dict] | None = None,
                 keypoints: Iterable[dict] | None = None) -> None:
    """Write the layout tables of :mod:`patchlens.data.dataset` into ``out_dir``.

    ``manifest`` rows may omit optional columns (empty string / frame -1 filled in);
    ``classes[i]`` is the name of class ``i``. The old manifest is removed first and the new one
    written last (each file atomically), so a half-converted directory never has a manifest;
    optional tables not given are removed so no stale one survives. Every mask must be an 8-bit
    index PNG of its row's height x width (:func:`check_masks`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.csv").unlink(missing_ok=True)
    fill = {c: "" for c in MANIFEST_COLUMNS} | {"frame": -1}
    man = pd.DataFrame([fill | row for row in manifest], columns=MANIFEST_COLUMNS)
    if man.empty:
        raise DataError(f"{out_dir}: no images selected; check the split and max_* parameters")
    dup = man["image"][man["image"].duplicated()]
    if len(dup):
        raise DataError(f"{out_dir}: image id {dup.iloc[0]!r} would appear twice in the "
                        "manifest; the source lists it more than once")
    write_csv(pd.DataFrame({"class": range(len(classes)), "name": list(classes)}),
              out_dir / "classes.csv")
    for table, columns, fname in ((objects, OBJECT_COLUMNS, "objects.csv"),
                                  (keypoints, KEYPOINT_COLUMNS, "keypoints.csv")):
        if table is None:
            (out_dir / fname).unlink(missing_ok=True)
        else:
            write_csv(pd.DataFrame(list(table), columns=columns), out_dir / fname)
    check_masks(out_dir, man)
    write_csv(man, out_dir / "manifest.csv")


def check_masks(out_dir: Path, manifest: pd.DataFrame) -> None:
    """DataError naming the first mask that is not an 8-bit index PNG of its image's size, or
    depth map that is not a 16-bit PNG of it (reads only the PNG headers)."""
    for column in ("semantic", "instance", "depth"):
        for rel, h, w in manifest[manifest[column] != ""][[column, "height", "width"]].itertuples(
                index=False):
            path = Path(out_dir) / rel
            size = [int(v) if str(v).strip().lstrip("-").isdigit() and int(v) > 0 else None
                    for v in (h, w)]
            with open_image(path) as im:
                bad = (depth_problem if column == "depth" else mask_problem)(im, *size)
            if bad:
                raise DataError(f"{path}: {bad}; the source tree is inconsistent: re-extract "
                                "the archive or fix the converter")
