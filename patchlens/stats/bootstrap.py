"""Seeded bootstrap over the independent units of a task (pure numpy; no I/O).

Protocol (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 13: percentile
intervals; Ch. 16: bootstrap hypothesis tests; the resampling unit of every task is stated in
docs/protocols.md#resampling-units, to be merged into docs/protocols.md):

* A replicate draws the units (query images, objects, sequences, keypoint pairs, queries) with
  replacement, ``n_s`` from each stratum of ``n_s`` units (stratified bootstrap; one stratum when
  none is given), and RE-ACCUMULATES the score from the drawn units' additive statistics:
  ``ratio`` sums numerators and denominators (mean AP, top-1, accuracy, J, F, PCK of one
  category), ``category_ratio`` takes that ratio within each category (stratum) and averages the
  categories (PCK over all categories, the SPair convention), ``iou`` sums
  per-class tp / fp / fn before taking the mean IoU (the confusion-matrix mIoU, never a mean of
  per-image IoUs), ``mlmap`` recomputes the multi-label mAP of the drawn queries.
* Where a task has support seeds, a replicate also draws the seeds with replacement (S of S) and
  averages the replicate score over the drawn seeds; the SAME unit draw is used for every seed,
  since the query set is shared (two-stage bootstrap of the seed-mean score).
* Interval: the bias-corrected percentile interval: the percentile interval
  [q_(1-level)/2, q_(1+level)/2] of the replicates shifted by their median bias,
  theta*_b - (median(theta*) - theta_hat) (Efron & Tibshirani 1993, Sec. 10.6: bias estimate
  from the replicates). Resampling with replacement duplicates units, and for a ranking
  statistic (the multi-label mAP: a duplicated query is several tied items) that raises every
  replicate, so the plain percentile interval can lie above its own score; after the shift the
  point estimate is the median of the shifted replicates, so the interval always contains it.
  For the ratio statistics the median bias is ~0 and the interval is the percentile interval.
  (Efron's BC interval moves the quantile levels instead and still excludes the estimate when
  more than (1 + level) / 2 of the replicates lie on one side of it.)
* Paired comparison of two models on the same units and seeds: every replicate uses one draw for
  both, ``diff`` = score_a - score_b on the original sample, the interval is the bias-corrected
  percentile interval of the replicate differences. The two-sided p-value: with at most
  :data:`EXACT_MAX_UNITS` units, the exact paired permutation (sign-flip) test over all 2^n
  assignments that swap the two models' statistics of a unit (the same swap on every seed),
  p = #{|d_pi| >= |d|} / 2^n, which cannot go below 2 / 2^n (the identity and the full swap);
  with more units, the centred bootstrap test, p = (1 + #{|d*_b - d| >= |d|}) / (B + 1), whose
  floor is 1 / (B + 1) (:func:`p_floor`). 1 for identical models. docs/protocols.md, "Paired
  comparisons", says which test applies when.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


AGGREGATORS = ("ratio", "category_ratio", "iou", "mlmap")
DEFAULT_PARAMS = {"n_boot": 1000, "level": 0.95, "seed": 0}
EXACT_MAX_UNITS = 16  # up to 2^16 = 65,536 sign assignments: the exact test, else the bootstrap


@dataclass
class UnitData:
    """Additive statistics of one score on one support seed, one row per unit (units in the order
    of ``UnitSet.units``). ``ratio``: ``num`` (n,), ``den`` (n,); ``iou``: ``tp``, ``fp``, ``fn``
    (n, K); ``mlmap``: ``score`` (n, K) float, ``target`` (n, K) bool."""
    agg: str
    arrays: dict


def resample_counts(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) how often each unit is drawn per replicate: within every stratum, as many draws
    with replacement as the stratum has units (stratified bootstrap)."""
    strata = np.asarray(strata)
    n = strata.size
    counts = np.zeros((n_boot, n), np.float64)
    rows = np.arange(n_boot)[:, None]
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        draw = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        np.add.at(counts, (np.broadcast_to(rows, draw.shape), draw), 1.0)
    return counts


def ratio_score(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum(w * num) / sum(w * den) for every row of weights ``w`` (B, n) -> (B,)."""
    return (w @ np.asarray(num, float)) / np.maximum(w @ np.asarray(den, float), 1e-300)


def category_ratio_score(num: np.ndarray, den: np.ndarray, group: np.ndarray,
                         w: np.ndarray) -> np.ndarray:
    """Mean over groups of sum(w * num) / sum(w * den) within the group, for every row of weights
    ``w`` (B, n) -> (B,); groups whose weighted denominator is 0 are left out."""
    onehot = np.eye(int(group.max()) + 1)[np.asarray(group, np.int64)]       # (n, G)
    t = (w * np.asarray(num, float)) @ onehot
    d = (w * np.asarray(den, float)) @ onehot
    ok = d > 0
    r = np.where(ok, t / np.where(ok, d, 1.0), 0.0)
    return r.sum(1) / np.maximum(ok.sum(1), 1)


def iou_score(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Confusion-matrix mean IoU re-accumulated under weights ``w`` (B, n): per class
    TP / (TP + FP + FN) of the weighted sums, averaged over the classes whose union is > 0
    (PASCAL VOC, as :func:`patchlens.evaluation.metrics.mean_iou`)."""
    t, u = w @ np.asarray(tp, float), w @ (np.asarray(tp, float) + fp + fn)
    present = u > 0
    iou = np.where(present, t / np.where(present, u, 1.0), 0.0)
    return iou.sum(1) / np.maximum(present.sum(1), 1)


def mlmap_score(score: np.ndarray, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Multi-label mAP of the queries drawn by every row of counts ``w`` (B, n): a query drawn c
    times is c tied items of the ranking, so per class AP = sum over the tie groups of the
    descending scores of (dTP / TP) * TP_cum / N_cum with the drawn counts (the definition of
    :func:`patchlens.evaluation.metrics.average_precision`), averaged over the classes with a drawn
    positive (:func:`~patchlens.evaluation.metrics.multilabel_map`); NaN where none is drawn."""
    score, target, w = np.asarray(score, float), np.asarray(target, bool), np.asarray(w, float)
    total = np.zeros(len(w))
    n_cls = np.zeros(len(w))
    for c in range(score.shape[1]):
        order = np.argsort(-score[:, c], kind="mergesort")
        s = score[order, c]
        starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
        wo = w[:, order]
        n_cum = np.cumsum(np.add.reduceat(wo, starts, axis=1), axis=1)
        d_tp = np.add.reduceat(wo * target[order, c], starts, axis=1)
        tp_cum = np.cumsum(d_tp, axis=1)
        tp = tp_cum[:, -1]
        prec = np.divide(tp_cum, n_cum, out=np.zeros_like(tp_cum), where=n_cum > 0)
        ap = np.divide((d_tp * prec).sum(1), tp, out=np.zeros_like(tp), where=tp > 0)
        total += ap
        n_cls += tp > 0
    return np.divide(total, n_cls, out=np.full(len(w), np.nan), where=n_cls > 0)


def score(data: UnitData, w: np.ndarray) -> np.ndarray:
    """Score (B,) of one :class:`UnitData` under unit weights (B, n)."""
    a = data.arrays
    if data.agg == "ratio":
        return ratio_score(a["num"], a["den"], w)
    if data.agg == "category_ratio":
        return category_ratio_score(a["num"], a["den"], a["group"], w)
    if data.agg == "iou":
        return iou_score(a["tp"], a["fp"], a["fn"], w)
    if data.agg == "mlmap":
        return mlmap_score(a["score"], a["target"], w)
    raise ValueError(f"unknown aggregator {data.agg!r}; expected one of {AGGREGATORS}")


def point(seeds: list[UnitData]) -> float:
    """The score without resampling: mean over seeds of each seed's re-accumulated score."""
    n = _n_units(seeds)
    return float(np.mean([score(d, np.ones((1, n)))[0] for d in seeds]))


def _n_units(seeds: list[UnitData]) -> int:
    sizes = {len(next(iter(d.arrays.values()))) for d in seeds}
    if len(sizes) != 1:
        raise ValueError(f"seeds disagree on the number of units: {sorted(sizes)}")
    return sizes.pop()


def _replicates(seed_sets: list[list[UnitData]], strata, n_boot: int, rng) -> list[np.ndarray]:
    """Replicate seed-mean scores (B,) of each of several score sets sharing units and seeds."""
    n = _n_units(seed_sets[0])
    strata = np.zeros(n, np.int64) if strata is None else np.asarray(strata)
    w = resample_counts(strata, n_boot, rng)
    n_seeds = len(seed_sets[0])
    pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else \
        np.zeros((n_boot, 1), np.int64)
    out = []
    for seeds in seed_sets:
        per_seed = np.stack([score(d, w) for d in seeds])          # (S, B)
        out.append(np.nanmean(np.take_along_axis(per_seed.T, pick, axis=1), axis=1))
    return out


def bootstrap_ci(seeds: list[UnitData], strata=None, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(score, ci_low, ci_high): the seed-mean score and its percentile bootstrap interval
    (module doc). ``seeds``: one :class:`UnitData` per support seed, same units in the same
    order; ``strata`` (n,) optional stratum label of every unit."""
    rng = np.random.default_rng(seed)
    rep = _replicates([seeds], strata, n_boot, rng)[0]
    v = point(seeds)
    lo, hi = bias_corrected_interval(rep, v, level)
    return v, lo, hi


def bias_corrected_interval(rep: np.ndarray, estimate: float, level: float
                            ) -> tuple[float, float]:
    """Percentile interval of the replicates ``rep`` shifted by their median bias (module doc);
    it contains ``estimate`` whenever the replicates are finite."""
    rep = np.asarray(rep, float)
    if not np.isfinite(rep).any() or not np.isfinite(estimate):
        return float("nan"), float("nan")
    shifted = rep - (np.nanmedian(rep) - estimate)
    lo, hi = np.nanquantile(shifted, [(1 - level) / 2, (1 + level) / 2])
    return float(min(lo, estimate)), float(max(hi, estimate))  # guard float rounding only


def p_floor(n_units: int, n_boot: int) -> float:
    """The smallest two-sided p-value the paired test can report (module doc)."""
    return 2.0 / 2 ** n_units if n_units <= EXACT_MAX_UNITS else 1.0 / (n_boot + 1)


def _concat(a: UnitData, b: UnitData) -> UnitData:
    """The units of ``a`` followed by those of ``b`` (class axes padded to one width)."""
    arrays = {}
    for name, x in a.arrays.items():
        y = b.arrays[name]
        if x.ndim == 2 and x.shape[1] != y.shape[1]:
            k = max(x.shape[1], y.shape[1])
            x, y = (np.pad(z, ((0, 0), (0, k - z.shape[1]))) for z in (x, y))
        arrays[name] = np.concatenate([x, y])
    return UnitData(a.agg, arrays)


def sign_flip_p(seeds_a: list[UnitData], seeds_b: list[UnitData]) -> float:
    """Exact two-sided p-value of the paired permutation test (module doc): every assignment of
    the n units to (a, b) or (b, a), the same on every seed, the statistic re-accumulated."""
    n = _n_units(seeds_a)
    flips = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1           # (2^n, n)
    wa = np.concatenate([1 - flips, flips], axis=1).astype(float)      # unit i from a or b
    wb = 1.0 - wa
    d = np.zeros(2 ** n)
    for a, b in zip(seeds_a, seeds_b):
        both = _concat(a, b)
        d += score(both, wa) - score(both, wb)
    d /= len(seeds_a)
    obs = abs(d[0])  # row 0: no unit swapped, the observed difference
    if obs == 0 or not np.isfinite(obs):
        return 1.0
    return float(np.mean(np.abs(d) >= obs * (1 - 1e-9) - 1e-12))


def paired_bootstrap(seeds_a: list[UnitData], seeds_b: list[UnitData], strata=None,
                     n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float, float]:
    """(diff, ci_low, ci_high, p_value) of score_a - score_b over the SAME units and seeds, with
    one resample shared by both (module doc)."""
    if len(seeds_a) != len(seeds_b):
        raise ValueError("paired models must share their support seeds")
    rng = np.random.default_rng(seed)
    ra, rb = _replicates([seeds_a, seeds_b], strata, n_boot, rng)
    d = point(seeds_a) - point(seeds_b)
    rep = ra - rb
    lo, hi = bias_corrected_interval(rep, d, level)
    if _n_units(seeds_a) <= EXACT_MAX_UNITS:
        return float(d), lo, hi, sign_flip_p(seeds_a, seeds_b)
    ok = np.isfinite(rep)
    p = (1 + np.sum(np.abs(rep[ok] - d) >= abs(d) - 1e-12)) / (ok.sum() + 1)
    return float(d), lo, hi, float(min(1.0, p))
