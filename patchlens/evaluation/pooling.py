"""Mask-weighted pooling of patch tokens into object features (instance identification and
retrieval by scale; Vanyan et al. 2024, arXiv 2401.00463, Sec. 4; ``docs/protocols.md``): an
object's feature is the mean of the patch tokens over its instance mask, every patch weighted by
the fraction of it the mask covers (the mask resized to the grid by area).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from patchlens.data.dataset import Dataset
from patchlens.evaluation.upsample import grid_fraction
from patchlens.features.store import FeatureStore

log = logging.getLogger("patchlens")

_CHUNK = 64  # images read per batch


def object_weights(dataset: Dataset, objects: pd.DataFrame, grid: tuple[int, int],
                   task: str) -> tuple[np.ndarray, np.ndarray]:
    """Patch weights (n_obj, h, w) of each object row: the fraction of every grid cell covered by
    the object's instance mask (``instance`` id in the image's instance PNG, resized to the grid
    by area). Also returns a bool (n_obj,) of usable objects; the others (no instance mask for the
    image, or an empty mask) are logged as skipped."""
    weights = np.zeros((len(objects), *grid), np.float32)
    ok = np.zeros(len(objects), bool)
    has_mask = dataset.manifest["instance"] != ""
    for image, rows in objects.groupby("image", sort=False):
        pos = objects.index.get_indexer(rows.index)
        if not has_mask.get(image, False):
            for inst in rows["instance"]:
                log.warning("%s: object %s/%s skipped: image has no instance mask", task, image,
                            inst)
            continue
        inst_map = dataset.load_instance(image)
        for i, inst in zip(pos, rows["instance"]):
            mask = inst_map == int(inst)
            if not mask.any():
                log.warning("%s: object %s/%s skipped: instance id %s is not in its instance "
                            "mask", task, image, inst, inst)
                continue
            weights[i] = grid_fraction(mask, grid)
            ok[i] = True
    return weights, ok


def pooled_features(store: FeatureStore, layer: int, transform, images: list[str],
                    weights: np.ndarray) -> np.ndarray:
    """Weighted mean (n_obj, C) of the transformed tokens of one layer: object i pools the tokens
    of ``images[i]`` with ``weights[i]`` (h, w). Reads each image once, in batches."""
    order = list(dict.fromkeys(images))
    where = {im: [] for im in order}
    for i, im in enumerate(images):
        where[im].append(i)
    out = None
    for c0 in range(0, len(order), _CHUNK):
        chunk = order[c0:c0 + _CHUNK]
        tok = transform(layer, store.tokens(layer, chunk))  # (n, h, w, C)
        if out is None:
            out = np.zeros((len(images), tok.shape[-1]), np.float32)
        for j, im in enumerate(chunk):
            idx = where[im]
            w = weights[idx]
            out[idx] = np.einsum("ohw,hwc->oc", w, tok[j]) / w.sum((1, 2))[:, None]
    return out
