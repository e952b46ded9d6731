"""Monocular depth from frozen patch features, layer by layer: a linear probe per layer.

Protocol (the linear depth evaluation of DINOv2, Oquab et al. 2023, arXiv 2304.07193, Sec. 7.4,
"lin. 1", on NYU Depth v2 with Eigen et al.'s metrics; docs/protocols.md#depth):

1. Patch targets: each training image's depth is reduced to the feature grid (the grid covers
   the whole image): the geometric mean of a cell's valid pixels (ground truth finite and in
   ``(min_depth, max_depth)``); a cell with less than ``min_valid`` valid area is dropped.
2. Training set (per seed): at most ``max_train_patches`` of the labelled patches of
   ``train_split``, drawn without replacement (seeded); all of them when fewer.
3. Head (:mod:`patchlens.evaluation.depth`): ``bins`` (default; DINOv2's 256 bins uniform in
   depth over [0.001, 10] m, multinomial logistic regression with L2 weight decay, full-batch
   L-BFGS from zero; prediction = softmax-weighted mean of the bin centres) or
   ``log_regression`` (ridge regression of log depth, closed form).
4. Query: every patch of every ``query_split`` image is predicted, the (h, w) depth map is
   upsampled bilinearly to the image's own (H, W) and scored on its valid pixels inside the
   evaluation crop (``eval_crop: eigen``: rows 45:471, columns 41:601 of a 480 x 640 NYU image;
   other sizes are scored whole), prediction clipped to [min_depth, max_depth] (the 10 m cap).
5. Metrics ``rmse``, ``absrel``, ``log10`` (lower is better) and ``delta1..3`` (higher) per
   image; the score is their mean over the query images, and each image is one resampling unit
   of the bootstrap intervals (aggregator ``ratio`` with denominator 1: the mean).

The feature ``transform`` (variant) is applied to training and query tokens alike.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import pandas as pd

from patchlens.params import expect_int, expect_number, expect_split
from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError, DataError
from patchlens.evaluation.depth import (HEADS, LOWER_IS_BETTER, METRICS, SPACINGS, depth_metrics,
                                        eval_crop, fit_head, patch_targets, valid_mask)
from patchlens.evaluation.probes import check_fit_params
from patchlens.evaluation.support import check_seeds
from patchlens.evaluation.upsample import resize_bilinear
from patchlens.features.store import FeatureStore
from patchlens.params import merge_params
from patchlens.stats.units import records
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

TASK = "depth"
DEFAULT_PARAMS = {
    "head": "bins",              # bins (DINOv2's classification) or log_regression
    "n_bins": 256,               # bins of the bins head
    "bin_spacing": "linear",     # bin centres uniform in depth (DINOv2) or in log depth
    "min_depth": 0.001,          # metres; ground truth outside (min, max) is not scored
    "max_depth": 10.0,           # the 10 m cap of NYU Depth v2
    "eval_crop": "eigen",        # Eigen crop on 480 x 640 images; null: whole image
    "min_valid": 0.5,            # training patches need this share of valid pixels
    "max_train_patches": 100000,  # seeded draw of training patches per seed; null: all
    "weight_decay": 1e-4,        # L2 penalty (wd / 2) |W|^2 of either head
    "iters": 100,                # L-BFGS iterations of the bins head
    "seeds": [0],                # one training-patch draw per seed
    "train_split": "train",
    "query_split": "val",
}
REQUIRES = ("depth",)
_CHUNK = 32  # images whose tokens are held at once


def check_params(params: dict) -> dict:
    """``tasks.depth.params`` with defaults filled; ConfigError naming the key otherwise."""
    where = f"tasks.{TASK}.params"
    p = merge_params(params, DEFAULT_PARAMS, where)
    if p["head"] not in HEADS:
        raise ConfigError(f"{where}.head = {p['head']!r}: expected one of {list(HEADS)}")
    if p["bin_spacing"] not in SPACINGS:
        raise ConfigError(f"{where}.bin_spacing = {p['bin_spacing']!r}: expected one of "
                          f"{list(SPACINGS)}")
    expect_int(p["n_bins"], f"{where}.n_bins", 2)
    lo = expect_number(p["min_depth"], f"{where}.min_depth", 0, lo_open=True)
    expect_number(p["max_depth"], f"{where}.max_depth", lo, lo_open=True)
    if p["eval_crop"] not in ("eigen", None):
        raise ConfigError(f"{where}.eval_crop = {p['eval_crop']!r}: expected eigen or null")
    expect_number(p["min_valid"], f"{where}.min_valid", 0, 1, lo_open=True)
    if p["max_train_patches"] is not None:
        expect_int(p["max_train_patches"], f"{where}.max_train_patches", 1)
    check_fit_params(p, where)
    check_seeds(p["seeds"], f"{where}.seeds")
    expect_split(p["train_split"], f"{where}.train_split")
    expect_split(p["query_split"], f"{where}.query_split")
    return p


def _with_depth(dataset: Dataset, split: str, role: str) -> tuple[list[str], list[str]]:
    """(images of ``split`` with a depth map, those without), DataError when none has one."""
    images = dataset.split(split)
    has = dataset.manifest["depth"] != ""
    ok = [im for im in images if has[im]]
    if not ok:
        raise DataError(f"{dataset.root / 'manifest.csv'}: no image of {role} split {split!r} "
                        f"has a depth map; set tasks.{TASK}.params.{role}_split")
    return ok, [im for im in images if not has[im]]


@lru_cache(maxsize=4)
def _targets(dataset: Dataset, images: tuple[str, ...], grid: tuple[int, int],
             lo: float, hi: float, min_valid: float) -> np.ndarray:
    """Patch targets (n, h, w) of ``images``, once per job: an evaluator calls :func:`run`
    for every layer and variant with the same Dataset (:mod:`patchlens.evaluate`)."""
    out = np.stack([patch_targets(dataset.load_depth(im), grid, lo, hi, min_valid)
                    for im in images])
    out.setflags(write=False)
    return out


def training_patches(dataset: Dataset, images: list[str], grid: tuple[int, int], p: dict
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices into (image, h * w) of every labelled training patch, their depths)."""
    targets = _targets(dataset, tuple(images), tuple(grid), float(p["min_depth"]),
                       float(p["max_depth"]), float(p["min_valid"]))
    flat = targets.reshape(-1)
    idx = np.flatnonzero(np.isfinite(flat))
    if idx.size == 0:
        raise DataError(f"{dataset.root}: no training patch of split {p['train_split']!r} has "
                        f"{p['min_valid']:.0%} valid depth pixels; lower tasks.{TASK}.params."
                        "min_valid or check the depth maps")
    return idx, flat[idx]


def draw(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``limit`` of ``n`` items, drawn without replacement."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(int(seed)).choice(n, size=int(limit), replace=False))


def _gather(store, transform, layer: int, images: list[str], idx: np.ndarray) -> np.ndarray:
    """Tokens (len(idx), C) of the flat patch indices ``idx`` (image-major), read in chunks."""
    P = store.grid[0] * store.grid[1]
    img, patch = idx // P, idx % P
    out = []
    for c0 in range(0, len(images), _CHUNK):
        sel = (img >= c0) & (img < c0 + _CHUNK)
        if not sel.any():
            continue
        tok = transform(layer, store.tokens(layer, images[c0:c0 + _CHUNK]))
        tok = tok.reshape(tok.shape[0], P, -1)
        out.append(tok[img[sel] - c0, patch[sel]])
    return np.concatenate(out)


def predict_image(head, tokens: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth (H, W) of one image: the head on its patch tokens (h, w, C), upsampled bilinearly
    to ``size``."""
    h, w, C = tokens.shape
    return resize_bilinear(head.predict(tokens.reshape(h * w, C)).reshape(h, w), size)


def score(store: FeatureStore, dataset: Dataset, transform, params: dict,
          layers: list[int] | None = None, shuffle_seed: int | None = None) -> dict:
    """{(layer, seed): (query images, {metric: per-image values (n,)})} and the counts, of the
    protocol above. ``shuffle_seed`` (tests only): the training depths are permuted first, the
    chance-level control."""
    p = check_params(params)
    layers = store.layers if layers is None else list(layers)
    train, _ = _with_depth(dataset, p["train_split"], "train")
    query, skipped = _with_depth(dataset, p["query_split"], "query")
    for im in skipped:
        log.warning("%s: query image %r has no depth map; skipped", TASK, im)
    idx, depth = training_patches(dataset, train, store.grid, p)
    if shuffle_seed is not None:
        depth = np.random.default_rng(shuffle_seed).permutation(depth)
    gts = [dataset.load_depth(im) for im in query]
    masks = [valid_mask(g, p["min_depth"], p["max_depth"], eval_crop(g.shape, p["eval_crop"]))
             for g in gts]
    out = {}
    for layer in layers:
        for seed in p["seeds"]:
            rows = draw(len(idx), p["max_train_patches"], seed)
            x = _gather(store, transform, layer, train, idx[rows])
            head = fit_head(x, depth[rows], p["head"], p)
            del x
            values = {m: [] for m in METRICS}
            for c0 in range(0, len(query), _CHUNK):
                tok = transform(layer, store.tokens(layer, query[c0:c0 + _CHUNK]))
                for i, t in enumerate(tok):
                    g = gts[c0 + i]
                    res = depth_metrics(predict_image(head, t, g.shape), g, masks[c0 + i],
                                        p["min_depth"], p["max_depth"])
                    for m in METRICS:
                        values[m].append(res[m])
            out[(layer, seed)] = {m: np.asarray(v) for m, v in values.items()}
    counts = {"n_eval": len(query), "n_skipped": len(skipped), "n_train_patches":
              int(min(len(idx), p["max_train_patches"] or len(idx)))}
    return {"scores": out, "query": query, "counts": counts}


def run(store: FeatureStore, dataset: Dataset, transform, params: dict,
        layers: list[int] | None = None, units: list | None = None) -> pd.DataFrame:
    """Score every layer: one row per (layer, seed, metric) with ``value`` (the mean over query
    images with a scored pixel), ``n_eval`` / ``n_skipped`` (query images), ``n_train_patches``
    and ``n_empty`` (query images without a valid pixel, left out of the mean). ``units`` (a
    list) receives one record per query image (:mod:`patchlens.stats.units`, aggregator
    ``ratio``, denominator 1)."""
    res = score(store, dataset, transform, params, layers)
    query = np.asarray(res["query"], dtype=object)
    rows = []
    for (layer, seed), values in res["scores"].items():
        for m, v in values.items():
            ok = np.isfinite(v)
            if not ok.any():
                raise DataError(f"{dataset.root}: no query image has a valid depth pixel inside "
                                f"the evaluation crop; check tasks.{TASK}.params.max_depth and "
                                "eval_crop")
            rows.append({"layer": layer, "seed": seed, "metric": m, "value": float(v[ok].mean()),
                         **res["counts"], "n_empty": int((~ok).sum())})
            if units is not None:
                units.append(records(layer, seed, m, query[ok], "ratio", num=v[ok]))
    return pd.DataFrame(rows)


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",)) -> dict:
    """Costs of one layer, every variant (:func:`patchlens.plan.task_cost`): the head's fit
    (bins: two (n, C) x (C, K) products per L-BFGS iteration, at the probe's rate
    ``probe_flop``; log_regression: the Gram matrix) and the query patches' predictions, per
    seed and variant."""
    P = grid[0] * grid[1]
    n = counts.get(p["train_split"], 0) * P
    if p["max_train_patches"] is not None:
        n = min(n, p["max_train_patches"])
    nq = counts.get(p["query_split"], 0) * P
    times = len(variants) * len(p["seeds"])
    if p["head"] == "bins":
        K = p["n_bins"]
        fit, pred = 4.0 * n * C * K * p["iters"], 2.0 * nq * C * K
        return {"flop": times * (fit + pred), "probe_flop": times * fit}
    return {"flop": times * (2.0 * n * C * C + 2.0 * nq * C)}


SPEC = register_task(TaskSpec(
    name=TASK, title="Monocular depth", color="#882255", headline="delta1",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    order=70, figures=("depth",), flop=flop, lower_is_better=LOWER_IS_BETTER))
