"""Cosine k-NN search and DINO's temperature-weighted vote."""
import math

import numpy as np
import pytest

from patchlens.errors import ConfigError
from patchlens.evaluation.knn import (CosineIndex, check_vote_params, knn_scores, l2_normalize,
                                 weighted_vote)


def test_l2_normalize_unit_rows_and_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_search_matches_brute_force_cosine():
    rng = np.random.default_rng(0)
    bank, q = rng.normal(size=(200, 16)), rng.normal(size=(30, 16))
    sims, idx = CosineIndex(bank * 5.0).search(q, 7)  # scale of the bank must not matter
    brute = l2_normalize(q) @ l2_normalize(bank).T
    order = np.argsort(-brute, axis=1)[:, :7]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(sims, np.take_along_axis(brute, order, 1), atol=1e-5)


def test_k_larger_than_bank_is_clipped():
    sims, idx = CosineIndex(np.eye(3)).search(np.ones((2, 3)), 10)
    assert idx.shape == (2, 3) and (idx >= 0).all()


def test_weighted_vote_by_hand():
    # neighbours with similarities 0.9, 0.5, 0.1 labelled 0, 1, 1; T = 0.1
    sims = np.array([[0.9, 0.5, 0.1]], np.float32)
    idx = np.array([[0, 1, 2]])
    labels = np.array([0, 1, 1])
    w = [math.exp(0.9 / 0.1), math.exp(0.5 / 0.1), math.exp(0.1 / 0.1)]
    expect = np.array([[w[0], w[1] + w[2], 0.0]]) / sum(w)
    np.testing.assert_allclose(weighted_vote(sims, idx, labels, 3, 0.1), expect, rtol=1e-5)


def test_vote_temperature_limits():
    # two neighbours of class 1 at 0.6 outvote one of class 0 at 0.7 when T is large (plain
    # majority) but not when T is small (nearest neighbour)
    sims = np.array([[0.7, 0.6, 0.6]], np.float32)
    idx = np.array([[0, 1, 2]])
    labels = np.array([0, 1, 1])
    assert weighted_vote(sims, idx, labels, 2, 100.0).argmax() == 1
    assert weighted_vote(sims, idx, labels, 2, 0.01).argmax() == 0


def test_multilabel_vote_equals_sum_of_single_label_votes():
    rng = np.random.default_rng(1)
    sims = np.sort(rng.uniform(-1, 1, (5, 4)).astype(np.float32), 1)[:, ::-1]
    idx = rng.integers(0, 6, (5, 4))
    targets = rng.integers(0, 2, (6, 3))
    multi = weighted_vote(sims, idx, targets, 3, 0.07)
    per_class = [weighted_vote(sims, idx, targets[:, c], 2, 0.07)[:, 1] for c in range(3)]
    np.testing.assert_allclose(multi, np.stack(per_class, 1), rtol=1e-6)


def test_no_overflow_at_tiny_temperature():
    sims = np.array([[1.0, 0.99]], np.float32)
    s = weighted_vote(sims, np.array([[0, 1]]), np.array([0, 1]), 2, 1e-4)
    assert np.isfinite(s).all() and s[0, 0] > 0.99


def test_knn_scores_recover_bank_labels():
    bank = np.repeat(np.eye(4), 5, 0) + 0.01
    labels = np.repeat(np.arange(4), 5)
    s = knn_scores(CosineIndex(bank), labels, np.eye(4), 4, 5, 0.07)
    np.testing.assert_array_equal(s.argmax(1), np.arange(4))
    np.testing.assert_allclose(s.sum(1), 1.0)


@pytest.mark.parametrize("bad", [{"k": 0, "temperature": 0.1}, {"k": 3, "temperature": 0},
                                 {"k": 2.5, "temperature": 0.1}])
def test_bad_vote_params(bad):
    with pytest.raises(ConfigError, match="tasks.x.params"):
        check_vote_params(bad, "x")
