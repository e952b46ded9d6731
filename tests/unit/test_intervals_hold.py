"""Issue 18, cases 12 and 13: every task's interval contains its score and covers at about the
nominal rate; a paired p-value never goes below what its units can show."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from patchlens.evaluation.metrics import multilabel_map
from patchlens.stats.bootstrap import (UnitData, bootstrap_ci, p_floor, paired_bootstrap,
                                       point)
from patchlens.stats.units import intervals, records


def _units(agg: str, rng: np.random.Generator, n: int = 24):
    """Units of one score as the tasks record them (stats.units.records), per aggregator:
    instance_id / retrieval / tracking / lowshot accuracy (ratio), keypoints over categories
    (category_ratio), few-shot segmentation (iou), low-shot classification mAP (mlmap)."""
    names = [f"u{i}" for i in range(n)]
    if agg == "ratio":
        return records(0, 0, "m", names, num=rng.random(n) < 0.3, den=rng.integers(1, 4, n))
    if agg == "category_ratio":
        den = rng.integers(1, 6, n)
        return records(0, 0, "m", names, agg="category_ratio", num=rng.binomial(den, 0.4),
                       den=den, strata=rng.choice(["cat", "dog", "cow"], n))
    if agg == "iou":
        k = 4
        tp = rng.integers(0, 30, (n, k)) * (rng.random((n, k)) < 0.4)
        return records(0, 0, "m", names, "iou", tp=tp, fp=rng.integers(0, 20, (n, k)),
                       fn=rng.integers(0, 20, (n, k)))
    target = rng.random((n, 20)) < 0.08  # few positives per class: the demo's biased case
    return records(0, 0, "m", names, "mlmap", score=rng.normal(0, 1, (n, 20)) + 0.3 * target,
                   target=target)


@pytest.mark.parametrize("agg", ["ratio", "category_ratio", "iou", "mlmap"])
def test_every_aggregators_interval_contains_its_score(agg):
    for r in range(25):
        ci = intervals(_units(agg, np.random.default_rng(r)), n_boot=400).iloc[0]
        assert ci.ci_low <= ci.value_units <= ci.ci_high, (agg, r, ci.to_dict())


def _ap_sample(score, target):
    return multilabel_map(score, target)[0]  # the evaluator's own mAP, not the bootstrap's


def test_mlmap_interval_covers_the_expected_score_at_the_nominal_rate():
    """Queries drawn from a fixed population; the estimand is the expected mAP of n queries
    (AP's own small-sample bias relative to an infinite population is not the interval's)."""
    rng = np.random.default_rng(0)
    n, k, reps = 40, 5, 300
    pop_t = rng.random((50_000, k)) < 0.15
    pop_s = rng.normal(0, 1, pop_t.shape) + 0.8 * pop_t
    draws = [rng.choice(len(pop_t), n, replace=False) for _ in range(reps)]
    truth = np.mean([_ap_sample(pop_s[i], pop_t[i]) for i in draws])
    hits = 0
    for r, i in enumerate(draws):
        v, lo, hi = bootstrap_ci([UnitData("mlmap", {"score": pop_s[i], "target": pop_t[i]})],
                                 n_boot=300, seed=r)
        assert v == pytest.approx(_ap_sample(pop_s[i], pop_t[i]))
        hits += lo <= truth <= hi
    assert 0.90 <= hits / reps <= 0.99  # nominal 0.95; +-0.04 is ~3 Monte-Carlo SE


def test_ratio_interval_covers_the_mean_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits, reps = 0, 300
    for r in range(reps):
        x = rng.random(30) < 0.3
        _, lo, hi = bootstrap_ci([UnitData("ratio", {"num": x.astype(float),
                                                     "den": np.ones(30)})], n_boot=300, seed=r)
        hits += lo <= 0.3 <= hi
    assert 0.89 <= hits / reps <= 0.99  # n = 30 Bernoulli: the percentile family undercovers a bit


# -- case 13: the paired p-value --------------------------------------------------------------
def _ratio(v):
    return UnitData("ratio", {"num": np.asarray(v, float), "den": np.ones(len(v))})


def test_six_units_never_give_p_below_two_in_64():
    """Tracking's 6 objects: model a better on every object by a wide margin."""
    a = [0.9, 0.8, 0.95, 0.85, 0.9, 0.7]
    b = [0.1, 0.2, 0.15, 0.05, 0.3, 0.2]
    d, lo, hi, p = paired_bootstrap([_ratio(a)], [_ratio(b)], n_boot=999)
    assert d == pytest.approx(np.mean(a) - np.mean(b))
    assert p == pytest.approx(2 / 64) and p >= p_floor(6, 999) == 2 / 64


def test_sign_flip_p_equals_the_enumerated_permutation_test():
    """An independent enumeration of the 2^n swaps of the units' values (mean of a - b)."""
    rng = np.random.default_rng(3)
    a, b = rng.random(7), rng.random(7)
    d_obs = abs(np.mean(a - b))
    flips = [abs(np.mean(np.where(s, b - a, a - b)))
             for s in itertools.product([False, True], repeat=7)]
    want = np.mean(np.array(flips) >= d_obs - 1e-12)
    assert paired_bootstrap([_ratio(a)], [_ratio(b)], n_boot=200)[3] == pytest.approx(want)


def test_sign_flip_swaps_units_on_every_seed_and_handles_mlmap():
    rng = np.random.default_rng(4)
    t = rng.random((8, 3)) < 0.4
    seeds_a = [UnitData("mlmap", {"score": rng.normal(0, 1, (8, 3)) + 2 * t, "target": t})
               for _ in range(2)]
    seeds_b = [UnitData("mlmap", {"score": rng.normal(0, 1, (8, 3)), "target": t})
               for _ in range(2)]
    d, lo, hi, p = paired_bootstrap(seeds_a, seeds_b, n_boot=200)
    assert d == pytest.approx(point(seeds_a) - point(seeds_b))
    assert lo <= d <= hi and 2 / 2 ** 8 <= p <= 1
    assert paired_bootstrap(seeds_a, seeds_a, n_boot=200)[3] == 1.0


def test_many_units_use_the_bootstrap_test_with_its_floor():
    rng = np.random.default_rng(5)
    a, b = rng.random(40) + 1.0, rng.random(40)  # overwhelming difference, 40 units
    p = paired_bootstrap([_ratio(a)], [_ratio(b)], n_boot=199)[3]
    assert p == pytest.approx(1 / 200) == pytest.approx(p_floor(40, 199))


def test_a_corrupt_units_parquet_names_the_file(tmp_path):
    import pandas as pd

    from patchlens.errors import DataError
    from patchlens.stats.paired import read_units

    path = tmp_path / "units.parquet"
    pd.DataFrame({"a": np.arange(100)}).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-40])  # its footer lost
    with pytest.raises(DataError, match=rf"^{path}: not a readable parquet file .*rerun the "
                       r"rule that writes it$"):
        read_units([path])
