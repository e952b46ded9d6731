"""Linear CKA between the layers of feature files: the samples each mode and level compares,
read from :class:`~patchlens.features.store.FeatureStore` files in minibatch sets, and the
layer x layer table of one model pair.

The estimators and the protocol (Kornblith et al. 2019; Nguyen, Raghu & Kornblith 2021;
Raghu et al. 2021; Walmer et al. 2023 for ``teaching_matters``) are in
:mod:`patchlens.analysis.cka` and ``docs/protocols.md#cka``. No torch import.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import pandas as pd

from patchlens.analysis.cka import (TM_LEVEL, WHERE, check_params, gram_minmax, layer_norm,
                                    minibatch_cka_matrix)
from patchlens.errors import DataError
from patchlens.evaluation.upsample import resize_bilinear


def _model_name(store) -> str:
    return str(store.attrs.get("model") or store.path.parent.name)


def _level_samples(store, layer: int, images: list[str], level: str, grid, patch_idx,
                   chunk: int) -> np.ndarray:
    """(m, C) samples of one layer for ``images``: subsampled patches or mean-pooled tokens."""
    out = []
    for lo in range(0, len(images), chunk):
        t = store.tokens(layer, images[lo:lo + chunk])  # (n, h, w, C)
        if level == "image":
            out.append(t.mean((1, 2)))
            continue
        n, h, w, C = t.shape
        if (h, w) != tuple(grid):
            flat = resize_bilinear(t.transpose(1, 2, 0, 3).reshape(h, w, n * C), grid)
            t = flat.reshape(*grid, n, C).transpose(2, 0, 1, 3)
        t = t.reshape(n, -1, C)
        idx = patch_idx[lo:lo + chunk]
        out.append(t[np.arange(n)[:, None], idx].reshape(-1, C))
    return np.concatenate(out)


def _set_plan(images: list[str], level: str, grid, p: dict):
    """Shuffled image sets and per-image patch indices (same for both models)."""
    rng = np.random.default_rng(p["seed"])
    order = [images[i] for i in rng.permutation(len(images))]
    P = grid[0] * grid[1]
    s = 1 if level == "image" else min(p["max_patches_per_image"], P)
    n_sets = max(1, math.ceil(len(order) * s / p["set_size"]))
    plan = []
    for part in np.array_split(np.arange(len(order)), n_sets):
        ims = [order[i] for i in part]
        idx = None if level == "image" else np.argsort(rng.random((len(ims), P)), axis=1)[:, :s]
        plan.append((ims, idx))
    return plan, len(order) * s


def ln_layers(store) -> list[int]:
    """The layers compared in mode ``teaching_matters``: every stored layer that has a LayerNorm
    reading it (attribute ``ln_layers``), or every layer of a baseline (no LayerNorm at all)."""
    if store.attrs.get("kind") in ("pixels", "oracle"):
        return list(store.layers)
    have = store.attrs.get("ln_layers")
    if have is None or store.variable("ln_weight") is None:
        raise DataError(f"{store.path}: no LayerNorm parameters (ln_weight, ln_bias); the file "
                        "predates them: delete it and rerun extract_features, or set "
                        f"{WHERE}.mode: residual")
    have = [int(x) for x in np.atleast_1d(have)]
    return [l for l in have if l >= 0]


def _tm_samples(store, layer: int, images: list[str], chunk: int) -> np.ndarray:
    """(n, T * C) samples of one layer in mode teaching_matters: the LayerNorm output of all
    tokens of each image (class token first, then patches), flattened."""
    ln = None
    if store.attrs.get("kind") not in ("pixels", "oracle"):
        li = store.layers.index(int(layer))
        ln = (store.variable("ln_weight")[li], store.variable("ln_bias")[li],
              float(store.attrs.get("ln_eps", 1e-6)))
    out = []
    for lo in range(0, len(images), chunk):
        ims = images[lo:lo + chunk]
        t = store.tokens(layer, ims)
        t = t.reshape(t.shape[0], -1, t.shape[-1])
        if store.has_cls:
            t = np.concatenate([store.cls(layer, ims)[:, None], t], axis=1)
        if ln is not None:
            t = layer_norm(t, *ln)
        out.append(t.reshape(t.shape[0], -1))
    return np.concatenate(out)


def _cka_teaching_matters(store_a, store_b, images, p, same) -> pd.DataFrame:
    """Mode teaching_matters (module docstring): the images shuffled with ``seed`` and split into
    max(1, n // batch_size) near-equal minibatches (one minibatch set each), min-max scaled
    Grams; every minibatch weighs equally."""
    la, lb = ln_layers(store_a), ln_layers(store_b)
    rng = np.random.default_rng(p["seed"])
    order = [images[i] for i in rng.permutation(len(images))]
    if len(order) < 4:
        raise DataError(f"CKA ({TM_LEVEL}): {len(order)} images; the unbiased estimator needs "
                        "at least 4")
    # near-equal minibatches of at least batch_size images (each >= 4, as the estimator needs)
    k = max(1, len(order) // p["batch_size"])
    plan = [[order[i] for i in s] for s in np.array_split(np.arange(len(order)), k)]

    def layer_iter(store, layers, ims):
        for layer in layers:
            yield _tm_samples(store, layer, ims, p["read_chunk"])

    sets = ((layer_iter(store_a, la, ims), None if same else layer_iter(store_b, lb, ims))
            for ims in plan)
    mat = minibatch_cka_matrix(sets, len(order), p["seed"], gram=gram_minmax)  # 1 batch / set
    rows = [(_model_name(store_a), _model_name(store_b), a, b, TM_LEVEL, float(mat[i, j]),
             len(order)) for i, a in enumerate(la) for j, b in enumerate(lb)]
    return pd.DataFrame(rows, columns=["model_a", "model_b", "layer_a", "layer_b", "level",
                                       "value", "n_samples"])


def cka_layers(store_a, store_b, images: list[str] | None = None,
               params: dict | None = None) -> pd.DataFrame:
    """Minibatch linear CKA between every layer of ``store_a`` and every layer of ``store_b``.

    Mode ``residual`` (default), levels: ``patch`` -- patch tokens are the samples,
    ``max_patches_per_image`` patches per image
    drawn without replacement with a fixed ``seed`` (the same patches for both models; if the grids
    differ, both are bilinearly resampled to the smaller grid, assuming both models saw the same
    crop); ``image`` -- mean-pooled patch tokens are the samples. Images are shuffled (``seed``)
    and grouped into minibatch sets of about ``set_size`` samples; each layer of each store is read
    once per set (``read_chunk`` images at a time) and shuffled into ``batch_size`` minibatches
    (Nguyen et al. 2021). Passing the same store twice gives the within-model matrix from one read.
    Mode ``teaching_matters``: see the module docstring (level ``tokens_ln``; ``levels``,
    ``max_patches_per_image`` and ``set_size`` do not apply).
    Returns columns model_a, model_b, layer_a, layer_b, level, value, n_samples.
    """
    p = check_params(params)
    images = list(store_a.images if images is None else images)
    same = store_b is store_a or store_b.path.resolve() == store_a.path.resolve()
    if p["mode"] == "teaching_matters":
        return _cka_teaching_matters(store_a, store_b, images, p, same)
    grid = (min(store_a.grid[0], store_b.grid[0]), min(store_a.grid[1], store_b.grid[1]))
    rows = []
    for level in p["levels"]:
        plan, n_samples = _set_plan(images, level, grid, p)
        if n_samples < 4:
            raise DataError(f"CKA ({level}): {n_samples} samples from {len(images)} images; "
                            "the unbiased estimator needs at least 4")

        def layer_iter(store, ims, idx, level=level):
            for layer in store.layers:
                yield _level_samples(store, layer, ims, level, grid, idx, p["read_chunk"])

        sets: Iterator = ((layer_iter(store_a, ims, idx),
                           None if same else layer_iter(store_b, ims, idx)) for ims, idx in plan)
        mat = minibatch_cka_matrix(sets, p["batch_size"], p["seed"])
        for i, la in enumerate(store_a.layers):
            for j, lb in enumerate(store_b.layers):
                rows.append((_model_name(store_a), _model_name(store_b), la, lb, level,
                             float(mat[i, j]), n_samples))
    return pd.DataFrame(rows, columns=["model_a", "model_b", "layer_a", "layer_b", "level",
                                       "value", "n_samples"])
