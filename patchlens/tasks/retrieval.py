"""Object retrieval by scale: find the gallery images that show a query object, per object size.

Protocol (Vanyan et al. 2024, "Analyzing Local Representations of Self-supervised Vision
Transformers", arXiv 2401.00463, Sec. 4, object retrieval; small objects are where DINOv2 falls
behind DINO): every object of the ``query_split`` (``crop``) with a known identity is a query; its
feature is the mean of the (transformed) patch tokens over its instance mask (patch weights = mask
fraction, see :func:`patchlens.evaluation.pooling.object_weights`). A gallery image (split
``gallery_split``) scores the cosine similarity of its best patch (``pool: max``) or the mean of
its ``pool_k`` best patches (``pool: topk``) with the query. For each scale bin (edges
``scale_bins`` over an occurrence's sqrt(area_frac); bins are [lo, hi), the last one closed) the
average precision of the ranking is computed with positives = gallery images that show the
query's identity at a scale in that bin and negatives = gallery images that do not show it at all
(images showing it only at other scales are left out); bin ``all`` takes every image showing it as
positive. ``map`` = mean AP over the queries with at least one positive in the bin; the others are
skipped and counted in ``n_skipped`` of that bin.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore
from patchlens.params import merge_params
from patchlens.stats.units import records
from patchlens.evaluation.knn import l2_normalize
from patchlens.evaluation.metrics import average_precision
from patchlens.evaluation.pooling import object_weights, pooled_features
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

TASK = "retrieval"
DEFAULT_PARAMS = {
    "query_split": "crop",
    "gallery_split": "gallery",
    "pool": "max",                     # gallery image score: max | topk (mean of pool_k best)
    "pool_k": 5,
    "scale_bins": [0.0, 0.2, 0.4, 1.0],  # edges over sqrt(area_frac) of the occurrence
}
REQUIRES = ("objects", "instance")
POOLS = ("max", "topk")
_CHUNK = 32  # gallery images per batch


def check_params(params: dict) -> dict:
    """``tasks.retrieval.params`` with defaults filled; ConfigError naming the key otherwise."""
    p = merge_params(params, DEFAULT_PARAMS, f"tasks.{TASK}.params")
    if p["pool"] not in POOLS:
        raise ConfigError(f"tasks.{TASK}.params.pool = {p['pool']!r}: choose from {list(POOLS)}")
    if not isinstance(p["pool_k"], int) or isinstance(p["pool_k"], bool) or p["pool_k"] < 1:
        raise ConfigError(f"tasks.{TASK}.params.pool_k = {p['pool_k']!r}: expected an integer >= 1")
    bins = p["scale_bins"]
    numeric = isinstance(bins, (list, tuple, np.ndarray)) and all(
        isinstance(b, (int, float, np.number)) and not isinstance(b, bool) for b in bins)
    edges = np.asarray(bins if numeric else [], dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
        raise ConfigError(f"tasks.{TASK}.params.scale_bins = {p['scale_bins']!r}: expected at "
                          "least two increasing edges")
    p["scale_bins"] = edges
    return p


def bin_labels(edges: np.ndarray) -> list[str]:
    """Readable labels "0.00-0.20" of the bins between consecutive edges."""
    return [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:])]


def scale_bin(scale: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each scale: [lo, hi) bins, the last closed; -1 outside the edges."""
    b = np.searchsorted(edges, scale, side="right") - 1
    b[scale == edges[-1]] = len(edges) - 2
    b[(scale < edges[0]) | (scale > edges[-1])] = -1
    return b


def image_scores(query: np.ndarray, patches: np.ndarray, pool: str, k: int) -> np.ndarray:
    """Scores (nq, n_img) of gallery images for L2-normalised queries (nq, C): cosine similarity
    with each L2-normalised patch of ``patches`` (n_img, P, C), pooled over P by max or by the
    mean of the k largest."""
    sims = np.einsum("qc,npc->qnp", query, patches)
    if pool == "max":
        return sims.max(-1)
    k = min(k, sims.shape[-1])
    return np.partition(sims, -k, axis=-1)[..., -k:].mean(-1)


def gallery_scores(store: FeatureStore, layer: int, transform, gallery: list[str],
                   query: np.ndarray, pool: str, k: int) -> np.ndarray:
    """Scores (nq, n_gallery) of every gallery image for every query, read in batches."""
    out = np.zeros((query.shape[0], len(gallery)), np.float32)
    for c0 in range(0, len(gallery), _CHUNK):
        tok = transform(layer, store.tokens(layer, gallery[c0:c0 + _CHUNK]))
        patches = l2_normalize(tok.reshape(tok.shape[0], -1, tok.shape[-1]))
        out[:, c0:c0 + _CHUNK] = image_scores(query, patches, pool, k)
    return out


def run(store: FeatureStore, dataset: Dataset, transform, params: dict,
        layers: list[int] | None = None, units: list | None = None) -> pd.DataFrame:
    """Score every layer: rows (layer, seed=0, metric ``map``, scale_bin, value, n_eval,
    n_skipped) for each scale bin with at least one evaluable query, and for ``all``.
    ``units`` (a list) receives every evaluable query's AP per bin (:mod:`patchlens.stats.units`)."""
    p = check_params(params)
    layers = store.layers if layers is None else list(layers)
    objects = dataset.objects
    if objects is None or len(objects) == 0:
        raise DataError(f"{dataset.root / 'objects.csv'}: missing or empty; {TASK} needs the "
                        "object table of the data set")
    gallery = dataset.split(p["gallery_split"])
    if not gallery:
        raise DataError(f"{dataset.root / 'manifest.csv'}: gallery split {p['gallery_split']!r} "
                        f"has no images; set tasks.{TASK}.params.gallery_split")
    q_images = set(dataset.split(p["query_split"]))
    if not q_images:
        raise DataError(f"{dataset.root / 'manifest.csv'}: query split {p['query_split']!r} has "
                        f"no images; set tasks.{TASK}.params.query_split")
    queries = objects[objects["image"].isin(q_images)].reset_index(drop=True)
    unknown = queries["identity"] < 0
    for _, q in queries[unknown].iterrows():
        log.warning("%s: query %s/%s skipped: unknown identity", TASK, q["image"], q["instance"])
    n_skipped = int(unknown.sum())
    queries = queries[~unknown].reset_index(drop=True)
    weights, ok = object_weights(dataset, queries, store.grid, TASK)
    n_skipped += int((~ok).sum())
    queries, weights = queries[ok].reset_index(drop=True), weights[ok]

    edges = p["scale_bins"]
    labels = bin_labels(edges) + ["all"]
    g_index = {im: i for i, im in enumerate(gallery)}
    occ = objects[objects["image"].isin(g_index) & (objects["identity"] >= 0)]
    occ_img = occ["image"].map(g_index).to_numpy()
    occ_bin = scale_bin(np.sqrt(occ["area_frac"].to_numpy(dtype=float)), edges)
    ident = queries["identity"].to_numpy()
    n_bins = len(edges) - 1
    shows = np.zeros((len(queries), len(gallery)), bool)
    shows_at = np.zeros((n_bins, len(queries), len(gallery)), bool)
    for qi, d in enumerate(ident):
        hit = occ["identity"].to_numpy() == d
        shows[qi, occ_img[hit]] = True
        for b in range(n_bins):
            shows_at[b, qi, occ_img[hit & (occ_bin == b)]] = True
    for qi in np.flatnonzero(~shows.any(1)):
        log.warning("%s: query %s/%s (identity %d) skipped: no gallery image shows it", TASK,
                    queries["image"].iat[qi], queries["instance"].iat[qi], ident[qi])
    if not shows.any():
        raise DataError(f"{dataset.root / 'objects.csv'}: no query identity of split "
                        f"{p['query_split']!r} occurs in gallery split {p['gallery_split']!r}")
    positives = list(shows_at) + [shows]
    for label, pos in zip(labels, positives):
        if not pos.any():
            log.warning("%s: scale bin %s skipped: no gallery image shows a query object at that "
                        "scale", TASK, label)

    rows = []
    for layer in layers:
        q = l2_normalize(pooled_features(store, layer, transform, list(queries["image"]), weights))
        scores = gallery_scores(store, layer, transform, gallery, q, p["pool"], p["pool_k"])
        for label, pos in zip(labels, positives):
            evaluable = np.flatnonzero(pos.any(1))
            if evaluable.size == 0:
                continue
            aps = []
            for qi in evaluable:
                keep = pos[qi] | ~shows[qi]
                aps.append(average_precision(scores[qi, keep], pos[qi, keep]))
            rows.append({"layer": layer, "seed": 0, "metric": "map", "scale_bin": label,
                         "value": float(np.mean(aps)), "n_eval": int(evaluable.size),
                         "n_skipped": n_skipped + len(queries) - int(evaluable.size)})
            if units is not None:
                names = [f"{queries['image'].iat[qi]}/{queries['instance'].iat[qi]}"
                         for qi in evaluable]
                units.append(records(layer, 0, "map", names, num=aps, scale_bin=label))
    return pd.DataFrame(rows, columns=["layer", "seed", "metric", "scale_bin", "value", "n_eval",
                                       "n_skipped"])


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",)) -> dict:
    """The resource plan's cost of one layer (every variant): every query object against every
    gallery patch."""
    nq = counts.get(p["query_split"], 0)
    return {"flop": len(variants) * (2.0 * nq * counts.get(p["gallery_split"], 0) * grid[0]
                                     * grid[1] * C)}


SPEC = register_task(TaskSpec(
    name=TASK, title="Object retrieval", color="#009e73", headline="map",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    order=30, figures=("retrieval_scale",), flop=flop))
