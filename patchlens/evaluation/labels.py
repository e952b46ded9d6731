"""Semantic ground truth as class indices: the lookup from a data set's mask values (the ids of
``classes.csv``) to 0-based class indices, void (255) as -1. Shared by the evaluators that score
semantic masks (few-shot segmentation, Hummingbird retrieval).
"""
from __future__ import annotations

import numpy as np

from patchlens.data.dataset import VOID, Dataset
from patchlens.errors import DataError


def class_lut(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(lookup (256,) pixel value -> class index, -1 void, -2 unknown; class ids (K,))."""
    ids = dataset.classes["class"].to_numpy()
    path = dataset.root / "classes.csv"
    if len(ids) == 0:
        raise DataError(f"{path}: no classes listed")
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= VOID \
            or len(set(ids.tolist())) != len(ids):
        raise DataError(f"{path}: class ids must be unique integers 0..254 "
                        f"({VOID} is void); fix the file")
    lut = np.full(256, -2, np.int64)
    lut[ids] = np.arange(len(ids))
    lut[VOID] = -1
    return lut, ids


def load_labels(dataset: Dataset, image: str, lut: np.ndarray) -> np.ndarray:
    """Class indices (H, W) of an image's semantic PNG, -1 on void pixels."""
    out = lut[dataset.load_semantic(image)]
    if (out == -2).any():
        bad = sorted(set(dataset.load_semantic(image)[out == -2].tolist()))
        raise DataError(f"{dataset.root}: semantic mask of {image!r} has class id(s) {bad} that "
                        "classes.csv does not list; fix classes.csv or the mask")
    return out
