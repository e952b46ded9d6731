"""Instance identification from pooled patch features, layer by layer.

Protocol (Vanyan et al. 2024, "Analyzing Local Representations of Self-supervised Vision
Transformers", arXiv 2401.00463, Sec. 4; ``docs/protocols.md#instance_id``): the objects of the
evaluation split with a known appearance identity (objects.csv ``identity >= 0``) are each a query;
its feature is the mean of the (transformed) patch tokens over its instance mask, every patch
weighted by the fraction of it the mask covers (the mask resized to the grid by area). The gallery
of a query is every object in the *other* images (same-class objects of other identities are the
distractors); gallery objects are ranked by cosine similarity. Positives are the occurrences of the
same identity in other images. Metrics: ``top1`` (the first-ranked object is a positive) and ``map``
(mean over queries of the average precision). Queries without a positive are skipped and counted, as
are objects whose mask is empty or whose image has no instance mask. Data sets without identities
(PASCAL VOC: identity -1 everywhere) are skipped with a warning and an empty table.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from patchlens.data.dataset import Dataset
from patchlens.errors import DataError
from patchlens.features.store import FeatureStore
from patchlens.params import expect_split, merge_params
from patchlens.stats.units import records
from patchlens.evaluation.knn import l2_normalize
from patchlens.evaluation.metrics import average_precision, top1
from patchlens.evaluation.pooling import object_weights, pooled_features
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

TASK = "instance_id"
DEFAULT_PARAMS = {
    "split": "val",  # the objects of this split are queries and gallery at once
}
REQUIRES = ("objects", "instance")
COLUMNS = ["layer", "seed", "metric", "value", "n_eval", "n_skipped"]


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else
                                      ("object" if c == "metric" else "int64")) for c in COLUMNS})


def check_params(params: dict) -> dict:
    """``tasks.instance_id.params`` with defaults filled; ConfigError naming the key otherwise."""
    p = merge_params(params, DEFAULT_PARAMS, f"tasks.{TASK}.params")
    expect_split(p["split"], f"tasks.{TASK}.params.split")
    return p


def run(store: FeatureStore, dataset: Dataset, transform, params: dict,
        layers: list[int] | None = None, units: list | None = None) -> pd.DataFrame:
    """Score every layer: rows (layer, seed=0, metric in {top1, map}, value, n_eval, n_skipped);
    ``n_eval`` queries evaluated, ``n_skipped`` objects skipped (no mask, no positive).
    ``units`` (a list) receives every query's top-1 and AP (:mod:`patchlens.stats.units`)."""
    p = merge_params(params, DEFAULT_PARAMS, f"tasks.{TASK}.params")
    layers = store.layers if layers is None else list(layers)
    if dataset.objects is None or len(dataset.objects) == 0:
        raise DataError(f"{dataset.root / 'objects.csv'}: missing or empty; {TASK} needs the "
                        "object table of the data set")
    images = set(dataset.split(p["split"]))
    if not images:
        raise DataError(f"{dataset.root / 'manifest.csv'}: split {p['split']!r} has no images; "
                        f"set tasks.{TASK}.params.split")
    objs = dataset.objects[dataset.objects["image"].isin(images)].reset_index(drop=True)
    if len(objs) == 0:
        raise DataError(f"{dataset.root / 'objects.csv'}: no object in split {p['split']!r}")
    objs = objs[objs["identity"] >= 0].reset_index(drop=True)
    if len(objs) == 0:
        log.warning("%s: data set %s has no object identities (identity = -1 in objects.csv, "
                    "as in PASCAL VOC); instance identification skipped", TASK, dataset.root)
        return _empty()
    weights, ok = object_weights(dataset, objs, store.grid, TASK)
    n_skipped = int((~ok).sum())
    objs, weights = objs[ok].reset_index(drop=True), weights[ok]
    ident = objs["identity"].to_numpy()
    img = objs["image"].to_numpy()
    other = img[:, None] != img[None, :]
    positive = (ident[:, None] == ident[None, :]) & other
    queries = np.flatnonzero(positive.any(1))
    for i in np.flatnonzero(~positive.any(1)):
        log.warning("%s: query %s/%s (identity %d) skipped: no other image shows it", TASK,
                    img[i], objs["instance"].iat[i], ident[i])
    n_skipped += len(objs) - len(queries)
    if len(queries) == 0:
        raise DataError(f"{dataset.root / 'objects.csv'}: no identity of split {p['split']!r} "
                        "occurs in two images; nothing to identify")
    rows = []
    for layer in layers:
        f = l2_normalize(pooled_features(store, layer, transform, list(img), weights))
        sims = f @ f.T
        t1, ap = [], []
        for i in queries:
            g = other[i]
            t1.append(top1(sims[i, g], positive[i, g]))
            ap.append(average_precision(sims[i, g], positive[i, g]))
        for metric, vals in (("top1", t1), ("map", ap)):
            rows.append({"layer": layer, "seed": 0, "metric": metric, "value": float(np.mean(vals)),
                         "n_eval": len(queries), "n_skipped": n_skipped})
            if units is not None:
                names = [f"{img[i]}/{objs['instance'].iat[i]}" for i in queries]
                units.append(records(layer, 0, metric, names, num=vals))
    return pd.DataFrame(rows, columns=COLUMNS)


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",)) -> dict:
    """The resource plan's cost of one layer (every variant): pooling each image's objects, then
    every object against every other."""
    from patchlens.data.sizes import OBJECTS_PER_IMAGE

    n = counts.get(p["split"], 0)
    objs = n * OBJECTS_PER_IMAGE
    return {"flop": len(variants) * (n * grid[0] * grid[1] * C * 2.0 + 2.0 * objs * objs * C)}


SPEC = register_task(TaskSpec(
    name=TASK, title="Instance identification", color="#d55e00", headline="top1",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    order=20, figures=("instance_id",), flop=flop))
