"""Low-shot image classification from pooled features (patch mean and CLS), layer by layer.

Protocol (``docs/protocols.md#lowshot_cls``; the low-shot evaluations of SelfPatch, Yun et al.
2022, and of MIM studies, with DINO's weighted k-NN classifier, Caron et al. 2021): an image's
feature is the mean of its (transformed) patch tokens (``feature = patch``) or its (transformed)
class token (``feature = cls``, when the model has one). For each seed and each ``shots`` in ``n_shots``,
``shots`` support images are drawn per class without replacement from the support split among
the images whose primary label (the first of the manifest ``labels``) is that class; classes with
fewer candidates use all of them (warning, counted in ``n_classes_short``); classes that are the
primary label of some query image but of no support image are left out (warning, counted in
``n_classes_missing``). Every query image with labels is classified by cosine k-NN with the vote
exp(sim / T) over the support: ``acc`` = accuracy on the primary label. When some image carries
several labels, every support image also votes for all of its labels and ``mlmap`` = the mean over
classes of the AP of ranking the query images by that class's vote (classes without a positive
query are left out; PASCAL VOC classification mAP). Query images without labels are skipped and
counted.
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
from patchlens.evaluation.knn import CosineIndex, check_vote_params, weighted_vote
from patchlens.evaluation.metrics import accuracy, multilabel_map
from patchlens.evaluation.support import check_seeds, sample_support
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

TASK = "lowshot_cls"
DEFAULT_PARAMS = {
    "n_shots": [1, 5],           # support images per class; one result per value (column shots)
    "seeds": [0, 1, 2],
    "k": 10,
    "temperature": 0.07,
    "features": ["patch", "cls"],  # cls is left out (info) when the model has no class token
    "support_split": "train",
    "query_split": "val",
}
REQUIRES = ("labels",)
FEATURES = ("patch", "cls")
_CHUNK = 128  # images read per batch


def check_params(params: dict) -> dict:
    """``tasks.lowshot_cls.params`` with defaults filled; ConfigError naming the key otherwise."""
    p = merge_params(params, DEFAULT_PARAMS, f"tasks.{TASK}.params")
    check_vote_params(p, TASK)
    shots = p["n_shots"] if isinstance(p["n_shots"], (list, tuple)) else [p["n_shots"]]
    if not shots or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                            for s in shots):
        raise ConfigError(f"tasks.{TASK}.params.n_shots = {p['n_shots']!r}: expected a list of "
                          "integers >= 1")
    p["n_shots"] = list(shots)
    check_seeds(p["seeds"], f"tasks.{TASK}.params.seeds")
    if not isinstance(p["features"], (list, tuple)) or not p["features"] \
            or any(f not in FEATURES for f in p["features"]):
        raise ConfigError(f"tasks.{TASK}.params.features = {p['features']!r}: expected a "
                          f"non-empty list from {list(FEATURES)}")
    return p


def image_features(store: FeatureStore, layer: int, transform, images: list[str],
                   feature: str) -> np.ndarray:
    """(n, C) image features of one layer: mean of the transformed patch tokens (``patch``) or the
    transformed class token (``cls``), read in batches."""
    parts = []
    for c0 in range(0, len(images), _CHUNK):
        chunk = images[c0:c0 + _CHUNK]
        if feature == "cls":
            parts.append(transform(layer, store.cls(layer, chunk)))
        else:
            parts.append(transform(layer, store.tokens(layer, chunk)).mean(axis=(1, 2)))
    return np.concatenate(parts)


def _labelled(dataset: Dataset, split: str, role: str) -> tuple[list[str], list[str]]:
    images = dataset.split(split)
    if not images:
        raise DataError(f"{dataset.root / 'manifest.csv'}: {role} split {split!r} has no "
                        f"images; set tasks.{TASK}.params.{role}_split")
    has = dataset.manifest.loc[images, "labels"] != ""
    return [im for im in images if has[im]], [im for im in images if not has[im]]


def run(store: FeatureStore, dataset: Dataset, transform, params: dict,
        layers: list[int] | None = None, units: list | None = None) -> pd.DataFrame:
    """Score every layer: rows (layer, seed, metric in {acc, mlmap}, value, n_eval, n_skipped,
    shots, feature, n_classes_short, n_classes_missing). ``units`` (a list) receives per query
    image its correctness (acc) and class votes and labels (mlmap); :mod:`patchlens.stats.units`."""
    p = check_params(params)
    layers = store.layers if layers is None else list(layers)
    feats = [f for f in p["features"] if f == "patch" or store.has_cls]
    if "cls" in p["features"] and not store.has_cls:
        log.info("%s: %s has no class token; feature 'cls' left out", TASK, store.path)
    if not feats:
        raise ConfigError(f"tasks.{TASK}.params.features = ['cls'] but {store.path} has no class "
                          "token; add 'patch'")
    query, q_skipped = _labelled(dataset, p["query_split"], "query")
    for im in q_skipped:
        log.warning("%s: query image %r has no labels; skipped", TASK, im)
    if not query:
        raise DataError(f"{dataset.root / 'manifest.csv'}: no image of query split "
                        f"{p['query_split']!r} has labels")
    pool, _ = _labelled(dataset, p["support_split"], "support")
    if not pool:
        raise DataError(f"{dataset.root / 'manifest.csv'}: no image of support split "
                        f"{p['support_split']!r} has labels")
    ids = dataset.classes["class"].tolist()
    index = {c: i for i, c in enumerate(ids)}
    K = len(ids)

    def targets(images):
        t = np.zeros((len(images), K), bool)
        for r, im in enumerate(images):
            for c in dataset.labels(im):
                if c not in index:
                    raise DataError(f"{dataset.root / 'manifest.csv'}: image {im!r} has label "
                                    f"{c} that classes.csv does not list")
                t[r, index[c]] = True
        return t

    q_all, s_all = targets(query), targets(pool)
    q_primary = np.array([index[dataset.labels(im)[0]] for im in query])
    s_primary = np.array([index[dataset.labels(im)[0]] for im in pool])
    multi = bool((q_all.sum(1) > 1).any() or (s_all.sum(1) > 1).any())
    classes = np.unique(np.r_[q_primary, s_primary])
    presence = np.eye(K, dtype=bool)[s_primary]

    draws = {}
    for seed in p["seeds"]:
        for shots in p["n_shots"]:
            rows, short, missing = sample_support(presence, shots, seed, classes)
            for c in short:
                log.warning("%s seed %d: class %d is the primary label of %d support image(s), "
                            "fewer than %d shots; using all of them", TASK, seed, ids[c],
                            presence[:, c].sum(), shots)
            for c in missing:
                log.warning("%s seed %d: class %d has no support image in split %r; it is never "
                            "predicted", TASK, seed, ids[c], p["support_split"])
            draws[(seed, shots)] = (rows, len(short), len(missing))

    union = np.unique(np.concatenate([d[0] for d in draws.values()]))
    pos = np.searchsorted(union, np.arange(len(pool)))  # row of the pool -> row of ``union``
    out = []
    for layer in layers:
        for feature in feats:
            fq = image_features(store, layer, transform, query, feature)
            fs = image_features(store, layer, transform, [pool[r] for r in union], feature)
            for (seed, shots), (rows, n_short, n_missing) in draws.items():
                sims, idx = CosineIndex(fs[pos[rows]]).search(fq, p["k"])
                sc = weighted_vote(sims, idx, s_primary[rows], K, p["temperature"])
                base = {"layer": layer, "seed": seed, "n_eval": len(query),
                        "n_skipped": len(q_skipped), "shots": shots, "feature": feature,
                        "n_classes_short": n_short, "n_classes_missing": n_missing}
                out.append({**base, "metric": "acc", "value": accuracy(sc.argmax(1), q_primary)})
                if units is not None:
                    units.append(records(layer, seed, "acc", query, shots=shots, feature=feature,
                                         num=sc.argmax(1) == q_primary))
                if multi:
                    ml = weighted_vote(sims, idx, s_all[rows].astype(np.float32), K,
                                       p["temperature"])
                    out.append({**base, "metric": "mlmap", "value": multilabel_map(ml, q_all)[0]})
                    if units is not None:
                        units.append(records(layer, seed, "mlmap", query, "mlmap", score=ml,
                                             target=q_all, shots=shots, feature=feature))
    cols = ["layer", "seed", "metric", "value", "n_eval", "n_skipped", "shots", "feature",
            "n_classes_short", "n_classes_missing"]
    return pd.DataFrame(out, columns=cols)


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",)) -> dict:
    """The resource plan's cost of one layer (every variant): pooling every support and query
    image's patches, then per seed, feature and shot count the k-NN of the query images."""
    from patchlens.data.sizes import n_classes

    K, P = n_classes(entry), grid[0] * grid[1]
    nq = counts.get(p["query_split"], 0)
    pool = (counts.get(p["support_split"], 0) + nq) * P * C
    knn = sum(2.0 * nq * min(s * K, counts.get(p["support_split"], 0)) * C for s in p["n_shots"])
    return {"flop": len(variants) * (pool + len(p["seeds"]) * len(p["features"]) * knn)}


SPEC = register_task(TaskSpec(
    name=TASK, title="Low-shot classification", color="#56b4e9", headline="acc",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    order=60, figures=("lowshot_cls",), flop=flop,
    seed_pieces=False))  # its rows loop the features outside the seeds
