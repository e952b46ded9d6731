"""Bootstrap intervals and paired comparisons on constructed scores with known answers."""
import numpy as np
import pytest

from patchlens.stats.bootstrap import (UnitData, bootstrap_ci, iou_score, mlmap_score,
                                       paired_bootstrap, point, resample_counts)
from patchlens.evaluation.metrics import mean_iou, multilabel_map


def ratio(x, den=None):
    return UnitData("ratio", {"num": np.asarray(x, float),
                              "den": np.ones(len(x)) if den is None else np.asarray(den, float)})


def test_interval_covers_the_true_mean_at_its_nominal_rate():
    # units ~ N(mu, 1), n = 40: the 95% percentile interval of the mean must cover mu in about
    # 95% of samples; 300 seeded samples give a binomial sd of 0.013 around the true rate, and the
    # percentile method undercovers by about 1 point at n = 40 (Efron & Tibshirani 1993, Ch. 13)
    rng = np.random.default_rng(1)
    mu, hits, n_rep = 0.6, 0, 300
    for r in range(n_rep):
        x = rng.normal(mu, 1.0, 40)
        v, lo, hi = bootstrap_ci([ratio(x)], n_boot=400, seed=r)
        assert v == pytest.approx(x.mean())
        hits += lo <= mu <= hi
    assert 0.90 <= hits / n_rep <= 0.985, hits / n_rep


def test_interval_width_matches_the_standard_error():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2.0, 400)
    _, lo, hi = bootstrap_ci([ratio(x)], n_boot=2000)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_ratio_of_sums_not_mean_of_ratios():
    # PCK pools keypoints: pair 1 has 1 of 1 correct, pair 2 0 of 9 -> 0.1, not 0.5
    d = ratio([1, 0], den=[1, 9])
    assert point([d]) == pytest.approx(0.1)


def test_miou_bootstrap_reaccumulates_confusion_counts():
    # image A: 1000 class-1 pixels all right, 1000 background right; image B: 10 class-1 pixels
    # all predicted background. Dataset mIoU (one matrix): class 1 1000/1010, background
    # 1000/1010 -> 0.990; mean of per-image mIoUs: A = 1, B = mean(IoU_bg = 990/1000, IoU_1 = 0)
    m_a = np.array([[1000, 0], [0, 1000]])
    m_b = np.array([[990, 0], [10, 0]])
    ms = np.stack([m_a, m_b])
    tp = np.diagonal(ms, axis1=1, axis2=2)
    fp, fn = ms.sum(1) - tp, ms.sum(2) - tp
    data = UnitData("iou", {"tp": tp, "fp": fp, "fn": fn})
    dataset_miou = mean_iou(m_a + m_b)
    per_image = np.mean([mean_iou(m_a), mean_iou(m_b)])
    assert point([data]) == pytest.approx(dataset_miou)
    assert abs(dataset_miou - per_image) > 0.2
    # any resample = the mIoU of the re-summed confusion matrix
    w = np.array([[2, 0], [0, 2], [1, 1], [3, 1]], float)
    want = [mean_iou(np.tensordot(c, ms, 1)) for c in w]
    assert iou_score(tp, fp, fn, w) == pytest.approx(want)


def test_mlmap_of_a_resample_repeats_queries():
    rng = np.random.default_rng(3)
    s, t = np.round(rng.random((12, 3)), 1), rng.random((12, 3)) < 0.5  # rounding: ties
    t[0] = True
    w = resample_counts(np.zeros(12), 50, rng)
    w[0] = 1
    got = mlmap_score(s, t, w)
    assert got[0] == pytest.approx(multilabel_map(s, t)[0])
    for b in range(1, 50):
        idx = np.repeat(np.arange(12), w[b].astype(int))
        if not t[idx].any():
            assert np.isnan(got[b])
            continue
        assert got[b] == pytest.approx(multilabel_map(s[idx], t[idx])[0]), b


def test_stratified_resampling_keeps_stratum_sizes():
    strata = np.array(["a"] * 3 + ["b"] * 7)
    w = resample_counts(strata, 500, np.random.default_rng(0))
    assert (w[:, :3].sum(1) == 3).all() and (w[:, 3:].sum(1) == 7).all()
    assert w[:, :3].std() > 0  # units are really resampled


def test_identical_models_give_zero_difference_and_p_one():
    rng = np.random.default_rng(4)
    seeds = [ratio(rng.random(30)) for _ in range(3)]
    d, lo, hi, p = paired_bootstrap(seeds, seeds, n_boot=500)
    assert (d, lo, hi) == (0.0, 0.0, 0.0)
    assert p == 1.0


def test_pairing_cancels_shared_difficulty():
    # units differ a lot in difficulty (sd 1), model a beats b by 0.05 on every unit (noise 0.01):
    # each model's own interval is wide and the two overlap, the paired one excludes 0
    rng = np.random.default_rng(5)
    hard = rng.normal(0, 1, 50)
    a, b = hard + 0.05 + rng.normal(0, 0.01, 50), hard + rng.normal(0, 0.01, 50)
    _, lo_a, hi_a = bootstrap_ci([ratio(a)], n_boot=500)
    _, lo_b, hi_b = bootstrap_ci([ratio(b)], n_boot=500)
    assert lo_a < hi_b  # unpaired intervals overlap
    d, lo, hi, p = paired_bootstrap([ratio(a)], [ratio(b)], n_boot=500)
    assert d == pytest.approx(np.mean(a - b))
    assert 0 < lo < d < hi and p < 0.01


def test_no_difference_gives_a_large_p_value():
    rng = np.random.default_rng(6)
    p_values = []
    for r in range(40):
        hard = rng.normal(0, 1, 40)
        a, b = hard + rng.normal(0, 0.3, 40), hard + rng.normal(0, 0.3, 40)
        p_values.append(paired_bootstrap([ratio(a)], [ratio(b)], n_boot=300, seed=r)[3])
    # under the null the p-value is about uniform: a 5% test rejects rarely
    assert np.mean(np.array(p_values) < 0.05) <= 0.15
    assert np.median(p_values) > 0.25


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 60)
    same = [ratio(x) for _ in range(3)]
    spread = [ratio(x + e) for e in (-1.0, 0.0, 1.0)]  # support seeds shift the score by +-1
    v0, lo0, hi0 = bootstrap_ci(same, n_boot=500)
    v1, lo1, hi1 = bootstrap_ci(spread, n_boot=500)
    assert v0 == pytest.approx(v1)  # seed effects average out
    assert hi1 - lo1 > 2 * (hi0 - lo0)
