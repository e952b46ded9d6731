"""Few-shot semantic segmentation from frozen patch features, layer by layer (k-NN and linear
heads).

Protocol (Vanyan et al. 2024, "Analyzing Local Representations of Self-supervised Vision
Transformers", arXiv 2401.00463, Sec. 4; docs/protocols.md#fewshot_seg):

1. Support (per seed): for every class except ``background``, ``n_shots`` images are drawn without
   replacement from the support split among the images that contain the class (an image is a
   candidate for every class it contains); the support set is the union of the draws. A class with
   fewer candidate images than ``n_shots`` uses all of them (warning, counted in
   ``n_classes_short``); a class without any support patch is left out of the support (warning,
   counted in ``n_classes_missing``) and can then never be predicted.
2. Patch labels: the ground truth is resized to the feature grid by area (the grid covers the whole
   image); a patch takes the majority class of its labelled pixels and is dropped when its void
   share exceeds ``max_void``.
3. Query: every patch of every image of the query split is scored by
   - ``knn``: cosine k-NN over the support patches with DINO's vote exp(sim / T) (Caron et al.
     2021), see :mod:`patchlens.evaluation.knn`;
   - ``linear``: a linear probe (multinomial logistic regression, L2 weight decay, full-batch
     L-BFGS for a fixed number of iterations from zero: deterministic) on the support patches.
4. The (h, w, K) scores are upsampled bilinearly to the image's own (H, W), argmax gives the
   prediction, and one confusion matrix per (layer, seed, head) is accumulated over all query
   images; mIoU over classes present in the ground truth or the prediction, void ignored
   (PASCAL VOC protocol). Metrics ``miou_knn`` and ``miou_linear``.

The feature variant is applied to support and query tokens alike. All variants of a layer are
scored in one call (:func:`run_variants`): the k-NN of every variant comes from one similarity
product (raw and drop{m}) plus one for zscore (:mod:`patchlens.evaluation.similarity`), the linear
probe is fitted on each variant's transformed features.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore
from patchlens.params import expect_int, expect_number, expect_split, merge_params
from patchlens.stats.units import records
from patchlens.evaluation.knn import check_vote_params
from patchlens.evaluation.labels import class_lut, load_labels
from patchlens.evaluation.metrics import mean_iou, mean_iou_counts
from patchlens.evaluation.probes import check_fit_params
from patchlens.evaluation.support import check_seeds, sample_support
from patchlens.evaluation.seg_heads import image_confusions, seed_heads
from patchlens.evaluation.upsample import grid_fraction
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

TASK = "fewshot_seg"
DEFAULT_PARAMS = {
    "n_shots": 5,               # support images drawn per class
    "seeds": [0, 1, 2],         # one support draw per seed
    "k": 20,                    # neighbours of the k-NN head
    "temperature": 0.07,        # T of the exp(sim / T) vote
    "max_void": 0.5,            # support patches with a larger void share are dropped
    "heads": ["knn", "linear"],
    "background": 0,            # class id not drawn for (it comes with the others); null: none
    "linear_weight_decay": 1e-4,  # L2 penalty (wd / 2) * |W|^2 added to the mean cross-entropy
    "linear_iters": 100,        # L-BFGS iterations of the linear probe
    "support_split": "train",
    "query_split": "val",
}
REQUIRES = ("semantic",)
HEADS = ("knn", "linear")
_CHUNK = 32  # query images scored per batch (memory: chunk x h x w x C float32)


# -- ground truth at the feature grid ------------------------------------------------------------
def patch_labels(labels: np.ndarray, grid: tuple[int, int], n_classes: int,
                 max_void: float) -> np.ndarray:
    """Patch labels (h, w) int from pixel class indices (H, W) (negative = void): the majority
    class of each cell's labelled pixels (ties: lowest index), -1 where the void share exceeds
    ``max_void`` or no pixel is labelled."""
    counts = np.zeros((*grid, n_classes), np.float32)
    for c in np.unique(labels[labels >= 0]):
        counts[..., c] = grid_fraction(labels == c, grid)
    labelled = counts.sum(-1)
    out = counts.argmax(-1)
    out[(1.0 - labelled > max_void + 1e-6) | (labelled <= 1e-6)] = -1
    return out


# -- protocol ------------------------------------------------------------------------------------
def check_params(params: dict) -> dict:
    """``tasks.fewshot_seg.params`` with defaults filled; ConfigError naming the key otherwise
    (run by the jobs and, through :mod:`patchlens.startup`, when the workflow starts)."""
    where = f"tasks.{TASK}.params"
    p = merge_params(params, DEFAULT_PARAMS, where)
    check_vote_params(p, TASK)
    expect_int(p["n_shots"], f"{where}.n_shots", 1)
    check_seeds(p["seeds"], f"{where}.seeds")
    expect_number(p["max_void"], f"{where}.max_void", 0, 1)
    heads = p["heads"]
    if not isinstance(heads, (list, tuple)) or not heads or any(h not in HEADS for h in heads):
        raise ConfigError(f"{where}.heads = {heads!r}: expected a non-empty list from "
                          f"{list(HEADS)}")
    if p["background"] is not None:
        expect_int(p["background"], f"{where}.background", 0)
    check_fit_params(p, where, prefix="linear_")
    expect_split(p["support_split"], f"{where}.support_split")
    expect_split(p["query_split"], f"{where}.query_split")
    return p


@dataclass
class _Support:
    seed: int
    rows: np.ndarray       # rows of the support pool
    short: list[int]
    missing: list[int]


@dataclass(frozen=True)
class Episode:
    """What every layer of one job is scored on: the class lookup, the support pool's patch
    labels, one support draw per seed and the query images."""
    n_classes: int
    lut: np.ndarray              # (256,) pixel value -> class index (:func:`class_lut`)
    pool: list[str]              # support-split images with a semantic mask
    labels: np.ndarray           # (n_pool, h, w) patch labels of the pool, -1 dropped
    supports: list[_Support]     # one per seed, in the order of ``params.seeds``
    query: list[str]             # query images scored
    skipped: list[str]           # query images without a semantic mask


@dataclass(frozen=True)
class SupportCounts:
    """Size of one seed's support: images, labelled patches, classes short of ``n_shots``
    images, classes without any support patch."""
    n_images: int
    n_patches: int
    n_short: int
    n_missing: int


@dataclass(frozen=True)
class Counts:
    """Query images evaluated and skipped, and every seed's :class:`SupportCounts`."""
    n_eval: int
    n_skipped: int
    support: dict[int, SupportCounts]


def _prepare(store: FeatureStore, dataset: Dataset, p: dict) -> Episode:
    lut, ids = class_lut(dataset)
    K = len(ids)
    names = dict(zip(dataset.classes["class"], dataset.classes["name"]))
    query = dataset.split(p["query_split"])
    if not query:
        raise DataError(f"{dataset.root / 'manifest.csv'}: query split {p['query_split']!r} has "
                        f"no images; set tasks.{TASK}.params.query_split")
    has_gt = dataset.manifest["semantic"] != ""
    skipped = [im for im in query if not has_gt[im]]
    for im in skipped:
        log.warning("%s: query image %r has no semantic mask; skipped", TASK, im)
    query = [im for im in query if has_gt[im]]
    if not query:
        raise DataError(f"{dataset.root / 'manifest.csv'}: no image of query split "
                        f"{p['query_split']!r} has a semantic mask")
    pool = [im for im in dataset.split(p["support_split"]) if has_gt[im]]
    if not pool:
        raise DataError(f"{dataset.root / 'manifest.csv'}: support split {p['support_split']!r} "
                        f"has no image with a semantic mask; set tasks.{TASK}.params.support_split")
    grid = store.grid
    labels = np.stack([patch_labels(load_labels(dataset, im, lut), grid, K, p["max_void"])
                       for im in pool])                             # (n_pool, h, w)
    presence = np.zeros((len(pool), K), bool)
    for i, lab in enumerate(labels):
        presence[i, np.unique(lab[lab >= 0])] = True
    bg = p["background"]
    draw = np.array([c for c in range(K) if bg is None or ids[c] != bg], dtype=np.int64)
    supports = []
    for seed in p["seeds"]:
        rows, short, missing = sample_support(presence, p["n_shots"], seed, draw)
        have = np.zeros(K, bool)
        if rows.size:
            have[np.unique(labels[rows][labels[rows] >= 0])] = True
        missing = sorted(set(missing) | set(np.flatnonzero(~have).tolist()))
        for c in short:
            log.warning("%s seed %d: class %d (%s) is in %d support image(s), fewer than "
                        "n_shots=%d; using all of them", TASK, seed, ids[c], names[ids[c]],
                        presence[:, c].sum(), p["n_shots"])
        for c in missing:
            log.warning("%s seed %d: class %d (%s) has no support patch in split %r; it is left "
                        "out of the support and never predicted", TASK, seed, ids[c],
                        names[ids[c]], p["support_split"])
        if not have.any():
            raise DataError(f"{dataset.root}: seed {seed} drew no labelled support patch from "
                            f"split {p['support_split']!r} (max_void={p['max_void']})")
        supports.append(_Support(seed, rows, short, missing))
    return Episode(K, lut, pool, labels, supports, query, skipped)


def select_part(images: list, part: tuple[int, int] | None) -> list:
    """Part ``i`` of ``parts`` even consecutive parts of the query images (``part = (i, parts)``,
    None: all of them): the images a piece of a split job scores (:mod:`patchlens.plan.splits`)."""
    if part is None:
        return images
    i, n = part
    return images[round(i * len(images) / n):round((i + 1) * len(images) / n)]


def confusions_by_variant(store: FeatureStore, dataset: Dataset, variants: dict, params: dict,
                          layers: list[int] | None = None, per_image: dict | None = None,
                          device: str = "cpu", query_part: tuple[int, int] | None = None
                          ) -> tuple[dict, Counts]:
    """{variant: {(layer, seed, head): (K, K) int64}} of the protocol above for every variant of
    ``variants`` ({name: :class:`VariantSpec` or ``transform(layer, x)``}), and the
    :class:`Counts`. The support patch labels are computed once; the k-NN of every
    :class:`VariantSpec` comes from one :class:`VariantIndex` per seed (raw and every drop{m}
    from one product); the linear probe is fitted per variant on its transformed features.
    ``per_image`` (a dict) receives {variant: {(layer, seed, head): [(K, K) per query image]}}.
    ``device``: where the k-NN, the vote, the upsampling and the arg-max run (``"cuda"``; the
    linear probe's fit stays on the CPU). ``query_part``: only that part of the query images
    (:func:`select_part`)."""
    p = check_params(params)
    layers = store.layers if layers is None else list(layers)
    ep = _prepare(store, dataset, p)
    K, lut, pool, labels, supports = ep.n_classes, ep.lut, ep.pool, ep.labels, ep.supports
    query = select_part(ep.query, query_part)
    union = np.unique(np.concatenate([s.rows for s in supports]))
    pos = {int(r): i for i, r in enumerate(union)}
    out: dict = {v: {} for v in variants}
    for layer in layers:
        tok = store.tokens(layer, [pool[r] for r in union])  # (n, h, w, C) raw
        heads = {}
        for s in supports:
            rows = np.array([pos[int(r)] for r in s.rows], dtype=np.int64)
            lab = labels[s.rows]
            keep = lab >= 0
            heads[s.seed] = seed_heads(layer, tok, lambda a, rows=rows, keep=keep: a[rows][keep],
                                       lab[keep], variants, p, device)
        del tok
        conf = {(v, s.seed, h): np.zeros((K, K), np.int64)
                for v in variants for s in supports for h in p["heads"]}
        for c0 in range(0, len(query), _CHUNK):
            chunk = query[c0:c0 + _CHUNK]
            q = store.tokens(layer, chunk)
            n, h, w, C = q.shape
            gts = [load_labels(dataset, im, lut) for im in chunk]
            for seed, hv in heads.items():
                for v, hs in hv.items():
                    for name, (classes, score, _) in hs.items():
                        sc = score(q)[v].reshape(n, h, w, -1)
                        ms = image_confusions(sc, classes, name == "knn", gts, K, device)
                        for m_img in ms:
                            m_img = np.asarray(m_img.cpu() if hasattr(m_img, "cpu") else m_img)
                            conf[(v, seed, name)] += m_img
                            if per_image is not None:
                                per_image.setdefault(v, {}).setdefault(
                                    (layer, seed, name), []).append(m_img)
        for (v, seed, name), m in conf.items():
            if m.sum() == 0:
                raise DataError(f"{dataset.root}: every pixel of query split "
                                f"{p['query_split']!r} is void; nothing to evaluate")
            out[v][(layer, seed, name)] = m
    counts = Counts(len(query), len(ep.skipped),
                    {s.seed: SupportCounts(len(s.rows), int((labels[s.rows] >= 0).sum()),
                                           len(s.short), len(s.missing)) for s in supports})
    return out, counts


def confusions(store: FeatureStore, dataset: Dataset, transform, params: dict,
               layers: list[int] | None = None, per_image: dict | None = None,
               device: str = "cpu") -> tuple[dict, Counts]:
    """Confusion matrices {(layer, seed, head): (K, K) int64} of one ``transform`` (a
    :class:`VariantSpec` or ``transform(layer, x)``) and the :class:`Counts`
    (:func:`confusions_by_variant`). ``per_image`` receives {(layer, seed, head): [...]}."""
    inner = {} if per_image is not None else None
    conf, counts = confusions_by_variant(store, dataset, {"_": transform}, params, layers, inner,
                                         device)
    if per_image is not None:
        per_image.update(inner.get("_", {}))
    return conf["_"], counts


def run_variants(store: FeatureStore, dataset: Dataset, variants: dict, params: dict,
                 layers: list[int] | None = None, units: dict | None = None,
                 device: str = "cpu", query_part: tuple[int, int] | None = None
                 ) -> dict[str, pd.DataFrame]:
    """{variant: :func:`run`'s table} of every variant at once (``variants``: {name:
    :class:`VariantSpec` or transform}; ``units``: {name: list}; the evaluator's
    ``TaskSpec.run_variants``). ``query_part``: one part of the query images (a piece of a
    split job; :func:`merge_query_parts` gathers the parts)."""
    per_image = {} if units is not None else None
    conf, counts = confusions_by_variant(store, dataset, variants, params, layers, per_image,
                                         device, query_part)
    if units is not None:
        query = check_params(params)["query_split"]
        ims = select_part([im for im in dataset.split(query)
                          if dataset.manifest["semantic"][im] != ""], query_part)
        for v, found in per_image.items():
            for (layer, seed, head), ms in found.items():
                ms = np.stack(ms)
                tp = np.diagonal(ms, axis1=1, axis2=2)
                units[v].append(records(layer, seed, f"miou_{head}", ims, "iou", tp=tp,
                                        fp=ms.sum(1) - tp, fn=ms.sum(2) - tp))
    tables = {}
    for v, cv in conf.items():
        rows = []
        for (layer, seed, head), m in cv.items():
            sup = counts.support[seed]
            rows.append({"layer": layer, "seed": seed, "metric": f"miou_{head}",
                         "value": mean_iou(m), "n_eval": counts.n_eval,
                         "n_skipped": counts.n_skipped, "n_support_images": sup.n_images,
                         "n_support_patches": sup.n_patches, "n_classes_short": sup.n_short,
                         "n_classes_missing": sup.n_missing})
        tables[v] = pd.DataFrame(rows)
    return tables


def merge_query_parts(tables: list[pd.DataFrame], units: list[pd.DataFrame]
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows and units of :func:`run_variants` over every query image from those of its
    parts (:func:`select_part`, in order; one variant, the same layers and seeds in each):
    the units of each score concatenated in image order; ``value`` the mean IoU of the summed
    per-class counts (:func:`~patchlens.evaluation.metrics.mean_iou_counts`: the units' tp /
    fp / fn are the confusion matrix's diagonal and off-diagonal column and row sums, integers,
    so the sum is exact) and ``n_eval`` the sum of the parts'."""
    u = pd.concat(units, ignore_index=True)
    key = ["layer", "seed", "metric"]
    first = pd.concat(tables, ignore_index=True)
    order = pd.MultiIndex.from_frame(first[key].drop_duplicates())
    rank = order.get_indexer(pd.MultiIndex.from_frame(u[key]))
    u = u.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)
    rows = first.drop_duplicates(key).reset_index(drop=True)
    rows["n_eval"] = first.groupby(key, sort=False)["n_eval"].sum().to_numpy()
    for i, (layer, seed, metric) in enumerate(order):
        g = u[(u["layer"] == layer) & (u["seed"] == seed) & (u["metric"] == metric)]
        g = g[g["cls"] >= 0]
        cls = g["cls"].to_numpy(np.int64)
        k = int(cls.max()) + 1 if cls.size else 0
        tp, fp, fn = (np.bincount(cls, weights=g[c].to_numpy(float), minlength=k)
                      for c in ("tp", "fp", "fn"))
        rows.loc[i, "value"] = mean_iou_counts(tp, fp, fn)
    return rows, u


def run(store: FeatureStore, dataset: Dataset, transform, params: dict,
        layers: list[int] | None = None, units: list | None = None,
        device: str = "cpu") -> pd.DataFrame:
    """Score every layer: one row per (layer, seed, head) with metric ``miou_<head>``, ``value``,
    ``n_eval`` / ``n_skipped`` (query images), and ``n_support_images``, ``n_support_patches``,
    ``n_classes_short``, ``n_classes_missing`` of that seed's support. ``units`` (a list) receives
    per query image and class tp / fp / fn (:mod:`patchlens.stats.units`, aggregator ``iou``)."""
    return run_variants(store, dataset, {"_": transform}, params, layers,
                        None if units is None else {"_": units}, device)["_"]


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",),
         shared_product: bool = True, tensor_cores: bool = True) -> dict:
    """The resource plan's cost of one layer (every variant, every seed). The k-NN head: every
    query patch against every support patch, from the shared similarity product
    (:func:`patchlens.evaluation.similarity_cost.similarity_cost`: 2 products for raw + zscore +
    every drop{m}, ``select`` = the values normalised and top-k'd per variant;
    ``shared_product=False``: one product per variant; ``tensor_cores=False``: float32 FLOPs on
    a GPU). The linear head's ``probe_flop``, per variant (per L-BFGS evaluation, about
    one per iteration, the two (patches x C) x (C x K+1) matmuls, then the query logits).
    ``pixels`` = pixel x class values upsampled and arg-maxed per query image, head and variant
    (``pixel_flop``: their two interpolation products, their cost on a GPU, where the vote, the
    upsampling and the arg-max run)."""
    from patchlens.data.sizes import image_size, n_classes
    from patchlens.evaluation.similarity_cost import similarity_cost

    K = n_classes(entry)
    n_sup = min(counts.get(p["support_split"], 0), p["n_shots"] * K)
    n_query = counts.get(p["query_split"], 0)
    ns, nq = n_sup * grid[0] * grid[1], n_query * grid[0] * grid[1]
    heads, seeds, V = set(p["heads"]), len(p["seeds"]), len(variants)
    h, w = image_size(entry)
    pixels = V * seeds * len(heads) * n_query * h * w * (K + 1)
    out = {"flop": 0.0, "sim_flop": 0.0, "select": 0.0, "probe_flop": 0.0, "pixels": pixels,
           "pixel_flop": pixels * 2.0 * sum(grid)}
    if "knn" in heads:
        knn = similarity_cost(nq, ns, C, variants, shared_product, tensor_cores)
        out.update({k: seeds * v for k, v in knn.items()})
    if "linear" in heads:
        out["probe_flop"] = V * seeds * (p["linear_iters"] * 2 * 2.0 * ns * C * (K + 1)
                                         + 2.0 * nq * C * (K + 1))
        out["flop"] += out["probe_flop"]
    return out


SPEC = register_task(TaskSpec(
    name=TASK, title="Few-shot segmentation", color="#0072b2", headline="miou_knn",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    run_variants=run_variants, order=10, figures=("fewshot_seg",), flop=flop,
    query_pieces=merge_query_parts))
