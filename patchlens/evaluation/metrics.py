"""Scores of the image-level evaluators: confusion-matrix mIoU, average precision, top-1 and
multi-label mAP. Pure numpy; callers skip items a metric is undefined for (and count them), so
these functions raise ``ValueError`` instead of returning NaN.
"""
from __future__ import annotations

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = ground truth, columns = prediction.

    Pixels whose ``gt`` is negative (void / ignore) are left out. Class indices are 0-based."""
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in size: {gt.shape} vs {pred.shape}")
    keep = gt >= 0
    gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
    if gt.size and (gt.max() >= n_classes or pred.min() < 0 or pred.max() >= n_classes):
        raise ValueError(f"class index outside 0..{n_classes - 1}")
    return np.bincount(gt * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def iou_per_class(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU_c = TP / (TP + FP + FN) from a confusion matrix, and the mask of classes present in
    the ground truth or the prediction (IoU of the others is undefined and returned as 0)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return np.where(present, tp / np.where(present, union, 1), 0.0), present


def mean_iou_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """:func:`mean_iou` from per-class true positives, false positives and false negatives
    (a confusion matrix's diagonal, column sums minus it, row sums minus it)."""
    tp = np.asarray(tp, dtype=np.float64)
    union = tp + np.asarray(fp, dtype=np.float64) + np.asarray(fn, dtype=np.float64)
    present = union > 0
    if not present.any():
        raise ValueError("no labelled pixel was evaluated")
    return float(np.where(present, tp / np.where(present, union, 1), 0.0)[present].mean())


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction of a confusion
    matrix accumulated over a whole data set (the PASCAL VOC protocol, Everingham et al. 2010:
    void pixels are left out before counting, see :func:`confusion_matrix`)."""
    iou, present = iou_per_class(conf)
    if not present.any():
        raise ValueError("confusion matrix is empty: no labelled pixel was evaluated")
    return float(iou[present].mean())


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of a ranking by descending ``scores`` with 0/1 ``positive`` labels:
    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds (tied scores form one
    threshold), the non-interpolated definition of scikit-learn's ``average_precision_score``
    (Zhu 2004; Manning et al. 2008, Sec. 8.4). Undefined without positives (ValueError)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive).ravel().astype(bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last item of each tie group
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def top1(scores: np.ndarray, positive: np.ndarray) -> float:
    """1.0 if the highest-scoring item is a positive, else 0.0 (ties: the first in input order)."""
    return float(np.asarray(positive).ravel()[int(np.argmax(np.asarray(scores).ravel()))])


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of items whose predicted class equals the true class."""
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    if pred.size == 0 or pred.shape != true.shape:
        raise ValueError(f"accuracy needs equal, non-empty label arrays "
                         f"({pred.shape}, {true.shape})")
    return float(np.mean(pred == true))


def multilabel_map(scores: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Multi-label mAP (the PASCAL VOC classification measure): the mean over classes of the
    average precision of ranking the images by that class's score; classes without a positive
    image are left out. Returns (mAP, number of classes averaged)."""
    scores, targets = np.asarray(scores), np.asarray(targets).astype(bool)
    cols = np.flatnonzero(targets.any(axis=0))
    if cols.size == 0:
        raise ValueError("multi-label mAP needs at least one positive label")
    aps = [average_precision(scores[:, c], targets[:, c]) for c in cols]
    return float(np.mean(aps)), int(cols.size)
