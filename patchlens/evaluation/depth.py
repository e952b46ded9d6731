"""Monocular depth from frozen patch features: patch targets, the two linear heads, and the NYU
Depth v2 error metrics (docs/protocols.md#depth).

Metrics (Eigen et al., NIPS 2014, "Depth Map Prediction from a Single Image using a Multi-Scale
Deep Network", Sec. 4; the set every NYU Depth v2 table since reports, e.g. DINOv2, Oquab et al.
2023, Sec. 7.4), on the valid pixels of ONE image (ground truth finite and in
``(min_depth, max_depth)``, inside the evaluation crop), prediction clipped to
``[min_depth, max_depth]``:

* ``rmse``   = sqrt(mean((d - d*)^2))               (metres)
* ``absrel`` = mean(|d - d*| / d*)
* ``log10``  = mean(|log10 d - log10 d*|)
* ``delta<i>`` = share of pixels with max(d / d*, d* / d) < 1.25^i, i = 1, 2, 3

A data set's score is the mean of the per-image values (as in the evaluation code of BTS,
AdaBins and the depth toolbox DINOv2 uses), not the metric pooled over all pixels.

Heads, on patch features (n, C) standardised with the training mean and standard deviation (as
the batch norm of DINOv2's linear depth head; no L2 normalisation: depth is not a direction):

* ``bins``: the patch's depth is classified into ``n_bins`` bins (DINOv2: 256 bins uniform in
  depth between 0.001 and 10 m) by multinomial logistic regression
  (:class:`~patchlens.evaluation.probes.LinearProbe`: cross-entropy, L2 weight decay, L-BFGS
  from zero, deterministic); the prediction is the softmax-weighted mean of the bin centres.
* ``log_regression``: ridge regression of the patch's log depth (closed form).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchlens.evaluation.probes import LinearProbe
from patchlens.evaluation.upsample import grid_fraction

METRICS = ("rmse", "absrel", "log10", "delta1", "delta2", "delta3")
LOWER_IS_BETTER = ("rmse", "absrel", "log10")
EIGEN_SIZE = (480, 640)           # NYU Depth v2 image (H, W)
EIGEN_CROP = (45, 471, 41, 601)   # rows y0:y1, columns x0:x1 (Eigen et al. 2014)
HEADS = ("bins", "log_regression")
SPACINGS = ("linear", "log")


# -- ground truth --------------------------------------------------------------------------------
def valid_mask(gt: np.ndarray, min_depth: float, max_depth: float,
               crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Pixels (H, W) scored: ground truth finite and strictly inside (min_depth, max_depth),
    and inside ``crop`` (y0, y1, x0, x1) when given."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    if crop is not None:
        y0, y1, x0, x1 = crop
        inside = np.zeros(gt.shape, bool)
        inside[y0:y1, x0:x1] = True
        ok &= inside
    return ok


def eval_crop(size: tuple[int, int], crop: str | None) -> tuple[int, int, int, int] | None:
    """The evaluation crop of an image of ``size``: Eigen's (:data:`EIGEN_CROP`) when ``crop``
    is ``"eigen"`` and the image has NYU Depth v2's 480 x 640, else none (the whole image)."""
    if crop == "eigen" and tuple(size) == EIGEN_SIZE:
        return EIGEN_CROP
    return None


def patch_targets(gt: np.ndarray, grid: tuple[int, int], min_depth: float, max_depth: float,
                  min_valid: float) -> np.ndarray:
    """Patch depth (h, w) float32 from pixel depth (H, W): the geometric mean over the valid
    pixels of each grid cell (area weights, :func:`grid_fraction`), NaN where valid pixels cover
    less than ``min_valid`` of the cell."""
    ok = valid_mask(gt, min_depth, max_depth)
    share = grid_fraction(ok, grid)
    logs = grid_fraction(np.where(ok, np.log(np.where(ok, gt, 1.0)), 0.0), grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.exp(logs / share)
    out[~(share >= min_valid - 1e-6) | (share <= 0)] = np.nan
    return out.astype(np.float32)


# -- metrics -------------------------------------------------------------------------------------
def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, min_depth: float,
                  max_depth: float) -> dict[str, float]:
    """The six metrics of one image (module doc) over ``mask``; NaN when it is empty."""
    if not mask.any():
        return {m: float("nan") for m in METRICS}
    d = np.clip(np.nan_to_num(pred[mask].astype(np.float64), nan=max_depth, posinf=max_depth),
                min_depth, max_depth)
    g = gt[mask].astype(np.float64)
    ratio = np.maximum(d / g, g / d)
    return {"rmse": float(np.sqrt(np.mean((d - g) ** 2))),
            "absrel": float(np.mean(np.abs(d - g) / g)),
            "log10": float(np.mean(np.abs(np.log10(d) - np.log10(g)))),
            "delta1": float(np.mean(ratio < 1.25)),
            "delta2": float(np.mean(ratio < 1.25 ** 2)),
            "delta3": float(np.mean(ratio < 1.25 ** 3))}


# -- heads ---------------------------------------------------------------------------------------
def bin_centres(n_bins: int, min_depth: float, max_depth: float, spacing: str) -> np.ndarray:
    """``n_bins`` bin centres (m) from ``min_depth`` to ``max_depth``, uniform in depth
    (``linear``, DINOv2's "UD") or in log depth (``log``)."""
    if spacing == "log":
        return np.geomspace(min_depth, max_depth, n_bins)
    return np.linspace(min_depth, max_depth, n_bins)


@dataclass
class DepthHead:
    """A fitted head: ``predict(x)`` -> depth (n,) in metres from features (n, C)."""
    kind: str
    mean: np.ndarray
    scale: np.ndarray
    probe: LinearProbe | None = None     # bins
    centres: np.ndarray | None = None    # bins present in the training targets (K,)
    weight: np.ndarray | None = None     # log_regression (C,)
    bias: float = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float32) - self.mean) / self.scale
        if self.kind == "bins":
            if self.centres.size == 1:
                return np.full(len(z), self.centres[0], np.float32)
            logits = self.probe.logits(z).astype(np.float64)
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            return (p @ self.centres / p.sum(1)).astype(np.float32)
        return np.exp(z @ self.weight + self.bias).astype(np.float32)


def fit_head(x: np.ndarray, depth: np.ndarray, head: str, p: dict) -> DepthHead:
    """Fit ``head`` (``bins`` or ``log_regression``) on patch features (n, C) and their depths
    (n,) with the task parameters ``p`` (n_bins, bin_spacing, min_depth, max_depth,
    weight_decay, iters); see the module doc."""
    x = np.asarray(x, np.float32)
    mean = x.mean(0)
    scale = np.maximum(x.std(0), 1e-6)
    z = np.ascontiguousarray((x - mean) / scale, dtype=np.float32)
    wd = float(p["weight_decay"])
    if head == "bins":
        centres = bin_centres(int(p["n_bins"]), float(p["min_depth"]), float(p["max_depth"]),
                              p["bin_spacing"])
        label = np.abs(depth[:, None].astype(np.float64) - centres[None, :]).argmin(1)
        present, compact = np.unique(label, return_inverse=True)
        probe = None
        if present.size > 1:
            probe = LinearProbe.fit(z, compact, present.size, wd, int(p["iters"]), l2=False)
        return DepthHead("bins", mean, scale, probe=probe, centres=centres[present])
    y = np.log(depth.astype(np.float64))
    zd = z.astype(np.float64)
    zm = zd.mean(0)
    zc = zd - zm
    n = len(y)
    gram = zc.T @ zc / n + wd * np.eye(zc.shape[1])
    w = np.linalg.solve(gram, zc.T @ (y - y.mean()) / n)
    return DepthHead("log_regression", mean, scale, weight=w.astype(np.float32),
                     bias=float(y.mean() - zm @ w))
