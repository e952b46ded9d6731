"""mIoU, AP, top-1, accuracy and multi-label mAP against hand computations and scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from patchlens.evaluation.metrics import (accuracy, average_precision, confusion_matrix,
                                          iou_per_class, mean_iou, multilabel_map, top1)
from helpers.synthetic import random_ranking_ap


def test_confusion_matrix_ignores_void():
    gt = np.array([[0, 0, 1], [1, -1, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    expect = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 3), expect)


def test_miou_of_hand_made_confusion():
    conf = np.array([[5, 1, 0, 0],
                     [2, 3, 0, 0],
                     [0, 0, 0, 0],   # class 2: absent from GT and prediction -> ignored
                     [0, 0, 0, 4]])
    # IoU0 = 5 / (5+1+2) ; IoU1 = 3 / (3+2+1) ; IoU3 = 4 / 4
    iou, present = iou_per_class(conf)
    np.testing.assert_array_equal(present, [True, True, False, True])
    assert mean_iou(conf) == pytest.approx((5 / 8 + 3 / 6 + 1.0) / 3)


def test_miou_counts_predicted_but_absent_class_as_zero():
    conf = np.array([[3, 1], [0, 0]])  # class 1 predicted once, never in GT: IoU 0
    assert mean_iou(conf) == pytest.approx((3 / 4 + 0.0) / 2)


def test_empty_confusion_raises():
    with pytest.raises(ValueError):
        mean_iou(np.zeros((3, 3)))


def test_ap_by_hand():
    # ranking: +, -, +, -  -> AP = (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)


def test_ap_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[0] = 1
        s = rng.integers(0, 5, n).astype(float)  # many ties
        assert average_precision(s, y) == pytest.approx(average_precision_score(y, s))


def test_ap_without_positive_raises():
    with pytest.raises(ValueError):
        average_precision([0.1, 0.2], [0, 0])


def test_top1_and_accuracy():
    assert top1([0.1, 0.9, 0.5], [0, 1, 0]) == 1.0
    assert top1([0.1, 0.9, 0.5], [1, 0, 1]) == 0.0
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5


def test_multilabel_map_matches_sklearn_macro_and_skips_empty_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (30, 5))
    y[:, 4] = 0  # no positive: left out
    s = rng.normal(size=(30, 5))
    value, n = multilabel_map(s, y)
    assert n == 4
    assert value == pytest.approx(average_precision_score(y[:, :4], s[:, :4], average="macro"))


def test_random_ranking_ap_matches_simulation():
    rng = np.random.default_rng(2)
    n, r = 12, 3
    y = np.zeros(n, int)
    y[:r] = 1
    sim = np.mean([average_precision(rng.permutation(n), y) for _ in range(4000)])
    # the simulation mean has a standard error of about 0.005; 4 sigma
    assert random_ranking_ap(n, r) == pytest.approx(sim, abs=0.02)
    assert random_ranking_ap(n, n) == pytest.approx(1.0)
    assert random_ranking_ap(n, 1) == pytest.approx(np.sum(1 / np.arange(1, n + 1)) / n)
