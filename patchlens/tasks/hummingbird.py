"""Hummingbird: dense nearest-neighbour retrieval of patch labels from a memory bank, per layer.

Protocol (Balazevic et al., NeurIPS 2023, "Towards In-context Scene Understanding"; open
reimplementation github.com/vpariza/open-hummingbird-eval, ``hbird/hbird_eval.py``, used by
NeCo, Franca and others; every difference from it: ``docs/protocols.md#hummingbird``):

1. Memory images: the images of ``memory_split`` with a semantic mask, or a seeded subset of
   them (``fraction`` of the images, drawn per seed; or the ids listed in ``subset_file``, e.g.
   one of the reference's ``file_sets``).
2. Soft patch labels: each patch's share of every class among its pixels (area resize to the
   feature grid, :func:`patchlens.evaluation.upsample.grid_fraction`). Void pixels are one more
   label (``void: class``, as the reference's "other" of ADE20K) or are left out and the shares
   renormalised over the labelled pixels (``void: ignore``; all-void patches never enter).
3. Memory sampling: ``patches_per_image`` patches per memory image (default
   ``memory_size // n_images``, at most every patch), preferring rarer classes as the reference
   does: a class's frequency is the number of the image's patches it appears in, a patch's score
   the sum of the frequencies of the classes it holds times a uniform random number in [0, 1)
   (seeded per image and seed), and the lowest scores are kept.
4. Retrieval: each query patch (``query_split``) takes its ``k`` (30) most cosine-similar memory
   patches (exact search, :class:`patchlens.evaluation.similarity.VariantIndex`, one product
   for raw and every drop{m}, float16 tensor cores on a GPU; or an approximate faiss
   index, ``index: ivf | hnsw``, whose recall@k against exact search is measured on
   ``recall_sample`` query patches and reported as metric ``recall_at_k``), weighted by
   softmax(sim / ``temperature``) (0.02), and its label scores are the weighted sum of their soft
   labels (:func:`patchlens.evaluation.knn.weighted_vote`).
5. The (h, w, K+1) scores are upsampled bilinearly to the image's (H, W) and arg-maxed; one
   confusion matrix per (layer, seed) over the query split, void ground truth ignored; a pixel
   predicted as void counts as a miss of its true class. Metric ``miou``: mean IoU over the
   classes present in the ground truth or the predictions; ``miou_hungarian`` (``hungarian:
   true``) after matching predicted to true classes one-to-one for the most matched pixels
   (``scipy.optimize.linear_sum_assignment``), as the reference's ``PredsmIoU`` does.

The feature ``transform`` (variant) is applied to memory and query tokens alike.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from patchlens.params import expect_int, expect_number, expect_split
from patchlens.data.layout import subsample
from patchlens.device import choose_engine
from patchlens.errors import ConfigError, DataError
from patchlens.evaluation.ann import KINDS, ApproxCosineIndex, recall_at_k
from patchlens.evaluation.knn import check_vote_params, weighted_vote
from patchlens.evaluation.affinity import spec_groups
from patchlens.evaluation.similarity import VariantIndex
from patchlens.evaluation.labels import class_lut, load_labels
from patchlens.evaluation.support import check_seeds
from patchlens.evaluation.upsample import grid_fraction, resize_bilinear, upsample_argmax
from patchlens.params import merge_params
from patchlens.stats.units import records
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

TASK = "hummingbird"
DEFAULT_PARAMS = {
    "memory_size": 102_400,       # patches in the memory bank (1024 x 10^2, the reference's script)
    "patches_per_image": None,    # null: memory_size // memory images (as the reference)
    "k": 30,                      # nearest memory patches per query patch
    "temperature": 0.02,          # softmax temperature over the k cosine similarities
    "fraction": 1.0,              # share of the memory split's images used (reference: 1/8 ...)
    "subset_file": None,          # or: a file listing the memory image ids, one per line
    "seeds": [0],                 # one subset / patch draw per seed
    "void": "class",              # void pixels: "class" (a label of their own) or "ignore"
    "hungarian": False,           # also report miou_hungarian (the reference's matching)
    "index": "exact",             # "exact", or approximate: "ivf" / "hnsw" (faiss)
    "nlist": None,                # ivf cells (null: 4 sqrt(n))
    "nprobe": 16,                 # ivf cells visited per query
    "hnsw_m": 32,                 # hnsw links per node
    "ef_search": 128,             # hnsw candidates per query
    "recall_sample": 2000,        # query patches on which an approximate index's recall is measured
    "memory_split": "train",
    "query_split": "val",
}
REQUIRES = ("semantic",)
_CHUNK = 32  # memory / query images per batch


def check_params(params: dict) -> dict:
    """``tasks.hummingbird.params`` with defaults filled; ConfigError naming the key otherwise."""
    where = f"tasks.{TASK}.params"
    p = merge_params(params, DEFAULT_PARAMS, where)
    check_vote_params(p, TASK)
    expect_int(p["memory_size"], f"{where}.memory_size", 1)
    if p["patches_per_image"] is not None:
        expect_int(p["patches_per_image"], f"{where}.patches_per_image", 1)
    expect_number(p["fraction"], f"{where}.fraction", 0, 1, lo_open=True)
    if p["subset_file"] is not None and not (isinstance(p["subset_file"], str)
                                             and p["subset_file"]):
        raise ConfigError(f"{where}.subset_file = {p['subset_file']!r}: expected a file path "
                          "or null")
    check_seeds(p["seeds"], f"{where}.seeds")
    for key, allowed in (("void", ("class", "ignore")), ("index", ("exact",) + KINDS)):
        if p[key] not in allowed:
            raise ConfigError(f"{where}.{key} = {p[key]!r}: expected one of {list(allowed)}")
    if not isinstance(p["hungarian"], bool):
        raise ConfigError(f"{where}.hungarian = {p['hungarian']!r}: expected true or false")
    if p["nlist"] is not None:
        expect_int(p["nlist"], f"{where}.nlist", 1)
    for key in ("nprobe", "hnsw_m", "ef_search", "recall_sample"):
        expect_int(p[key], f"{where}.{key}", 1)
    expect_split(p["memory_split"], f"{where}.memory_split")
    expect_split(p["query_split"], f"{where}.query_split")
    return p


# -- protocol pieces (pure numpy) ---------------------------------------------------------------
def soft_labels(labels: np.ndarray, grid: tuple[int, int], n_classes: int,
                void: str = "class") -> np.ndarray:
    """(h, w, K+1) share of each class (channels 0..K-1) and of void (channel K) among the
    pixels of each patch, from class indices (H, W) (negative = void). ``void="ignore"``: the
    void channel is 0 and the class shares are renormalised over the labelled pixels (all-void
    patches are all 0)."""
    out = np.zeros((*grid, n_classes + 1), np.float32)
    for c in np.unique(labels[labels >= 0]):
        out[..., c] = grid_fraction(labels == c, grid)
    out[..., n_classes] = grid_fraction(labels < 0, grid)
    if void == "ignore":
        out[..., n_classes] = 0
        total = out.sum(-1, keepdims=True)
        out = np.where(total > 1e-6, out / np.maximum(total, 1e-6), 0).astype(np.float32)
    return out


def sample_patches(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` patches of one image (soft labels (P, K+1)) preferring rare classes (the
    reference's sampling, step 3): frequency of a class = patches holding it; score of a patch =
    sum of its classes' frequencies x uniform[0, 1); the ``n`` lowest scores. Patches without
    any label are never drawn."""
    present = labels > 0
    score = (present * present.sum(0)).sum(1) * rng.random(len(labels))
    score[~present.any(1)] = np.inf
    n = min(n, int(present.any(1).sum()))
    return np.sort(np.argsort(score, kind="stable")[:n])


def iou_counts(conf: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn) of classes 0..K-1 from a (.., K+1, K+1) confusion matrix whose last column
    is "predicted void" (a miss of the true class, never a false positive of one)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)[..., :n_classes]
    fp = conf.sum(-2)[..., :n_classes] - tp
    fn = conf.sum(-1)[..., :n_classes] - tp
    return tp, fp, fn


def miou(conf: np.ndarray, n_classes: int) -> float:
    """Mean IoU over the classes 0..K-1 present in the ground truth or the prediction."""
    tp, fp, fn = (x.astype(np.float64) for x in iou_counts(conf, n_classes))
    union = tp + fp + fn
    if not (union > 0).any():
        raise DataError("hummingbird: no labelled query pixel was evaluated")
    return float((tp[union > 0] / union[union > 0]).mean())


def hungarian_order(conf: np.ndarray, n_classes: int) -> np.ndarray:
    """Column order of the one-to-one matching of predicted to true classes (0..K-1) with the
    most matched pixels (``linear_sum_assignment``); void prediction (column K) stays last."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-conf[:n_classes, :n_classes].astype(np.float64))
    order = np.arange(n_classes + 1)
    order[rows] = cols
    return order


# -- the task -----------------------------------------------------------------------------------
def _memory_images(dataset, p: dict, has_gt, seed: int) -> list[str]:
    pool = [im for im in dataset.split(p["memory_split"]) if has_gt[im]]
    if p["subset_file"] is not None:
        path = Path(p["subset_file"])
        if not path.is_file():
            raise ConfigError(f"tasks.{TASK}.params.subset_file: {path} does not exist")
        wanted = {Path(s.strip()).stem for s in path.read_text().splitlines() if s.strip()}
        pool = [im for im in pool if im in wanted]
    elif p["fraction"] < 1:
        pool = subsample(pool, max(1, int(len(pool) * p["fraction"])), seed, salt=TASK)
    if not pool:
        raise DataError(f"{dataset.root / 'manifest.csv'}: no image of memory split "
                        f"{p['memory_split']!r} with a semantic mask"
                        + (f" is listed in {p['subset_file']}" if p["subset_file"] else "")
                        + f"; set tasks.{TASK}.params.memory_split")
    return pool


def _memory(dataset, p, lut, K, grid, has_gt, seed):
    """(memory images, per image patch indices, stacked soft labels) of one seed."""
    images = _memory_images(dataset, p, has_gt, seed)
    per = p["patches_per_image"] or max(1, p["memory_size"] // len(images))
    picks, labs = [], []
    for im in images:
        lab = soft_labels(load_labels(dataset, im, lut), grid, K, p["void"]).reshape(-1, K + 1)
        rng = np.random.default_rng([seed, zlib.crc32(str(im).encode())])
        idx = sample_patches(lab, per, rng)
        picks.append(idx)
        labs.append(lab[idx])
    return images, picks, np.concatenate(labs), per


def _predict(scores: np.ndarray, size, device: str | None) -> np.ndarray:
    """Label indices (H, W) of the bilinearly upsampled scores (h, w, K+1). Labels scoring 0 on
    every patch are left out first: they cannot win (an upsampled pixel's scores sum to 1), so
    the result is the same at a fraction of the cost (ADE20K: 151 labels)."""
    cols = np.flatnonzero(scores.reshape(-1, scores.shape[-1]).max(0) > 0)
    if len(cols) == 1:
        return np.full(size, cols[0], np.int64)
    sub = np.ascontiguousarray(scores[..., cols])
    if device is None:
        return cols[resize_bilinear(sub, size).argmax(-1)]
    return cols[upsample_argmax(sub, size, device)]


def run_variants(store, dataset, variants: dict, params: dict, layers: list[int] | None = None,
                 units: dict | None = None, device: str = "cpu", engine: str | None = None
                 ) -> dict[str, pd.DataFrame]:
    """{variant: :func:`run`'s table} of every variant of ``variants`` ({name:
    :class:`~patchlens.features.variants.VariantSpec` or ``transform(layer, x)``}; ``units``:
    {name: list}) at once: the memory and query tokens are read once per layer and seed, and
    the exact search of every variant comes from one
    :class:`~patchlens.evaluation.similarity.VariantIndex` (raw and every drop{m} from one
    product, zscore from one more; float16 tensor cores on CUDA). An approximate index
    (``index: ivf | hnsw``) is built per variant on its transformed features; the exact search
    then runs on the recall sample only. The evaluator's ``TaskSpec.run_variants``."""
    p = check_params(params)
    engine = choose_engine(engine, device, "hummingbird")
    up_dev = device if engine == "torch" else None
    layers = list(store.layers) if layers is None else [int(x) for x in layers]
    lut, ids = class_lut(dataset)
    K, grid = len(ids), tuple(store.grid)
    has_gt = dataset.manifest["semantic"] != ""
    query_all = dataset.split(p["query_split"])
    query = [im for im in query_all if has_gt[im]]
    if not query:
        raise DataError(f"{dataset.root / 'manifest.csv'}: no image of query split "
                        f"{p['query_split']!r} has a semantic mask; set "
                        f"tasks.{TASK}.params.query_split")
    for im in query_all:
        if not has_gt[im]:
            log.warning("%s: query image %r has no semantic mask; skipped", TASK, im)
    gts = {im: load_labels(dataset, im, lut) for im in query}
    mems = {seed: _memory(dataset, p, lut, K, grid, has_gt, seed) for seed in p["seeds"]}
    rows: dict = {v: [] for v in variants}
    n_q = len(query) * grid[0] * grid[1]
    stride = max(1, n_q // p["recall_sample"])
    for layer in layers:
        for seed, (images, picks, mem_labels, per) in mems.items():
            for specs, t in spec_groups(variants):
                def tokens(ims, t=t):
                    x = store.tokens(layer, ims)
                    return x if t is None else t(layer, x)

                bank = np.concatenate([                   # memory images in chunks
                    x.reshape(-1, x.shape[-1])[i]
                    for c0 in range(0, len(images), _CHUNK)
                    for x, i in zip(tokens(images[c0:c0 + _CHUNK]), picks[c0:c0 + _CHUNK])])
                exact = VariantIndex(bank, specs, device if engine == "torch" else "cpu",
                                     "torch" if engine == "torch" else "faiss")
                approx = None if p["index"] == "exact" else {
                    v: ApproxCosineIndex(np.asarray(s.apply(bank), np.float32), p["index"],
                                         p["nlist"], p["nprobe"], p["hnsw_m"], p["ef_search"],
                                         seed) for v, s in specs.items()}
                per_image = {v: np.zeros((len(query), K + 1, K + 1), np.int64) for v in specs}
                recalls: dict = {v: [] for v in specs}
                for c0 in range(0, len(query), _CHUNK):
                    chunk = query[c0:c0 + _CHUNK]
                    q = tokens(chunk)
                    n, h, w, C = q.shape
                    q = q.reshape(n * h * w, C)
                    if approx is None:
                        found = exact.search(q, p["k"])
                    else:
                        sel = np.arange((-c0 * h * w) % stride, len(q), stride)
                        ref = exact.search(q[sel], p["k"])
                        found = {}
                        for v, s in specs.items():
                            found[v] = approx[v].search(np.asarray(s.apply(q), np.float32),
                                                        p["k"])
                            recalls[v].append(recall_at_k(found[v][1][sel], ref[v][1]))
                    for v, (sims, idx) in found.items():
                        sc = weighted_vote(sims, np.maximum(idx, 0), mem_labels, K + 1,
                                           p["temperature"])
                        sc = sc.astype(np.float32).reshape(n, h, w, K + 1)
                        for i, im in enumerate(chunk):
                            pred = _predict(sc[i], gts[im].shape, up_dev)
                            g = gts[im].ravel()
                            keep = g >= 0
                            per_image[v][c0 + i] = np.bincount(
                                g[keep] * (K + 1) + pred.ravel()[keep],
                                minlength=(K + 1) ** 2).reshape(K + 1, K + 1)
                extra = {"n_eval": len(query), "n_skipped": len(query_all) - len(query),
                         "n_memory": len(bank), "n_memory_images": len(images),
                         "n_patches_per_image": per}
                for v in specs:
                    rows[v] += _score_rows(layer, seed, per_image[v], recalls[v], query, extra,
                                           p, K, None if units is None else units[v])
    return {v: pd.DataFrame(r) for v, r in rows.items()}


def _score_rows(layer, seed, per_image, recalls, query, extra, p, K, units) -> list:
    """The rows (and units) of one (layer, seed, variant) from its per-image confusions."""
    rows = []
    conf = per_image.sum(0)
    scored = [("miou", per_image)]
    if p["hungarian"]:
        scored.append(("miou_hungarian", per_image[:, :, hungarian_order(conf, K)]))
    for metric, ms in scored:
        rows.append({"layer": layer, "seed": seed, "metric": metric,
                     "value": miou(ms.sum(0), K), **extra})
        if units is not None:
            tp, fp, fn = iou_counts(ms, K)
            units.append(records(layer, seed, metric, query, "iou", tp=tp, fp=fp, fn=fn))
    if recalls:
        r = np.concatenate(recalls)
        rows.append({"layer": layer, "seed": seed, "metric": "recall_at_k",
                     "value": float(r.mean()), **extra})
        if units is not None:
            units.append(records(layer, seed, "recall_at_k", np.arange(len(r)), num=r))
    return rows


def run(store, dataset, transform, params: dict, layers: list[int] | None = None,
        units: list | None = None, device: str = "cpu", engine: str | None = None
        ) -> pd.DataFrame:
    """Score every layer (module docstring): rows (layer, seed) with metrics ``miou`` (and
    ``miou_hungarian``, ``recall_at_k`` when asked for), ``n_eval`` / ``n_skipped`` (query
    images), ``n_memory`` (memory patches), ``n_memory_images``, ``n_patches_per_image``.
    ``units`` receives per query image and class tp / fp / fn (aggregator ``iou``).
    ``device``: where the exact search and the upsampling run; ``engine``: ``"numpy"`` (faiss
    and numpy, the CPU default) or ``"torch"`` (torch matmul + top-k and the upsampling on
    ``device``; the default off the CPU)."""
    return run_variants(store, dataset, {"_": transform}, params, layers,
                        None if units is None else {"_": units}, device, engine)["_"]


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",)) -> dict:
    """Resource plan (:func:`patchlens.plan.task_cost`): one layer costs, per seed, the exact
    search of every query patch against the memory bank for every variant, the products shared
    (:func:`~patchlens.evaluation.similarity_cost.similarity_cost`: 2 n_query n_memory C per
    product, every similarity visited once per variant)."""
    from patchlens.evaluation.similarity_cost import similarity_cost

    p = check_params(p)
    P = grid[0] * grid[1]
    n_img = max(1, int(counts.get(p["memory_split"], 0) * p["fraction"]))
    per = min(P, p["patches_per_image"] or max(1, p["memory_size"] // n_img))
    n_query = counts.get(p["query_split"], 0) * P
    cost = similarity_cost(n_query, n_img * per, C, variants)
    return {k: v * len(p["seeds"]) for k, v in cost.items()}


SPEC = register_task(TaskSpec(
    name=TASK, title="Hummingbird retrieval", color="#8c564b", headline="miou",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    order=80, figures=("hummingbird",), flop=flop, run_variants=run_variants))
