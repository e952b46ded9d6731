"""DAVIS region similarity J and boundary accuracy F, per object (torch-free).

Protocol (Perazzi et al., CVPR 2016 "A Benchmark Dataset and Evaluation Methodology for Video
Object Segmentation"; Pont-Tuset et al. 2017 "The 2017 DAVIS Challenge on Video Object
Segmentation"; reference code: github.com/davisvideochallenge/davis2017-evaluation,
``davis2017/metrics.py``):

- **J** (region similarity) = |pred ∩ gt| / |pred ∪ gt| over non-void pixels; 1 when the union is
  empty (both masks empty).
- **F** (contour accuracy) = harmonic mean of boundary precision and recall. Boundaries are the
  one-pixel maps of ``seg2bmap`` (D. Martin's BSDS code: a pixel is on the boundary when it differs
  from its east, south or south-east neighbour, i.e. boundaries offset half a pixel towards the
  origin) of the masks with void pixels removed. A predicted boundary pixel is matched when a
  ground-truth boundary pixel lies within the tolerance ``bound_pix = ceil(bound_th * ||(H, W)||)``
  (``bound_th = 0.008`` of the image diagonal; an absolute pixel count when ``bound_th >= 1``), i.e.
  inside the ground-truth boundary dilated by ``skimage.morphology.disk(bound_pix)``
  (``dx^2 + dy^2 <= r^2``); recall likewise the other way round. Conventions of the reference:
  both boundaries empty -> F = 1; only the prediction empty -> precision 1, recall 0 (F = 0); only
  the ground truth empty -> precision 0, recall 1 (F = 0).

The disk dilation is evaluated exactly as a radius query on the boundary pixel coordinates
(``scipy.spatial.cKDTree``): "some ground-truth boundary pixel q with |p - q| <= r" is the same set
as the dilation of the boundary by the disk, at a cost that grows with the boundary length instead
of the image area (unit tests check equality with the morphological dilation).

Void handling: the reference's semi-supervised evaluation (``davis2017/evaluation.py``,
``DAVISEvaluation.evaluate``) sets void (255) pixels of the annotations to 0 in
``DAVIS.get_all_masks`` and then calls ``_evaluate_semisupervised(..., None, ...)``, i.e. it passes
*no* void mask to ``db_eval_iou``/``db_eval_boundary``: void pixels count as background, so an
object predicted on them is a false positive. The metric functions of the reference do accept a
void mask and exclude those pixels (its unsupervised path passes one); the functions here do the
same when ``void`` is given, and :mod:`patchlens.tasks.tracking` passes the void mask, so void
pixels are excluded. On annotations without void pixels the two agree; where they differ is
listed in ``docs/protocols.md#tracking``.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

BOUND_TH = 0.008


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map (bool, same shape) of a binary mask, as DAVIS' ``_seg2bmap``.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour
    (outside the image counts as 0); on the last row only the east neighbour is compared, on the
    last column only the south one, and the bottom-right pixel is never a boundary.
    """
    seg = np.asarray(mask, dtype=bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def bound_pixels(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """Boundary tolerance in pixels: ``bound_th`` if >= 1, else ceil(bound_th * image diagonal)."""
    return float(bound_th) if bound_th >= 1 else float(np.ceil(bound_th * np.hypot(*shape[:2])))


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: IoU of two binary masks over non-void pixels; 1.0 when both are empty (DAVIS)."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, bool)
    inter = np.count_nonzero(gt & pred & keep)
    union = np.count_nonzero((gt | pred) & keep)
    return 1.0 if union == 0 else inter / union


def _matched(points: np.ndarray, targets: np.ndarray, radius: float) -> int:
    """How many ``points`` (n, 2) have a ``target`` within Euclidean distance <= radius."""
    if len(points) == 0 or len(targets) == 0:
        return 0
    # the next integer squared distance above r^2 is r^2 + 1, so a 1e-6 margin is exact
    d, _ = cKDTree(targets).query(points, k=1, distance_upper_bound=radius + 1e-6)
    return int(np.count_nonzero(np.isfinite(d)))


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = BOUND_TH) -> float:
    """F: boundary F-measure of a predicted vs a ground-truth binary mask (DAVIS ``f_measure``)."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if void is not None:
        keep = ~np.asarray(void, bool)
        gt, pred = gt & keep, pred & keep
    r = bound_pixels(gt.shape, bound_th)
    fg = np.argwhere(seg2bmap(pred))
    gb = np.argwhere(seg2bmap(gt))
    n_fg, n_gt = len(fg), len(gb)
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0  # (P, R) = (1, 0) or (0, 1)
    precision = _matched(fg, gb, r) / n_fg
    recall = _matched(gb, fg, r) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def region_similarity_labels(gt: np.ndarray, pred: np.ndarray, n_objects: int,
                             void: np.ndarray | None = None) -> np.ndarray:
    """J of objects 1..n_objects between two label maps (0 = background), vectorised.

    Returns (n_objects,) float64; an object absent from both maps scores 1 (DAVIS).
    """
    K = n_objects + 1
    g, p = np.asarray(gt).ravel(), np.asarray(pred).ravel()
    if void is not None:
        keep = ~np.asarray(void, bool).ravel()
        g, p = g[keep], p[keep]
    if g.size and (g.max() >= K or p.max() >= K):
        raise ValueError(f"label maps hold ids >= {K} (n_objects={n_objects})")
    conf = np.bincount(g.astype(np.int64) * K + p, minlength=K * K).reshape(K, K)
    inter = np.diag(conf)[1:].astype(np.float64)
    union = conf.sum(0)[1:] + conf.sum(1)[1:] - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def jf_labels(gt: np.ndarray, pred: np.ndarray, n_objects: int, void: np.ndarray | None = None,
              bound_th: float = BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
    """Per-object (J, F) of label maps ``gt``/``pred`` (H, W), ids 1..n_objects, 0 background.

    Every object is scored as its own binary mask, as the DAVIS semi-supervised evaluation does.
    """
    j = region_similarity_labels(gt, pred, n_objects, void)
    f = np.array([boundary_f(gt == k, pred == k, void, bound_th) for k in range(1, n_objects + 1)])
    return j, f
