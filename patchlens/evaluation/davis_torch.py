"""DAVIS J and F per object in torch, for the device path of tracking (same protocol as
:mod:`patchlens.evaluation.davis_metrics`, whose numpy functions match the official toolkit).

Protocol (Pont-Tuset et al. 2017, github.com/davisvideochallenge/davis2017-evaluation
``davis2017/metrics.py``; ``docs/protocols.md#tracking``): J = IoU of each object's binary mask
over non-void pixels (1 when both are empty); F = harmonic mean of boundary precision and recall,
boundaries from ``seg2bmap``, a boundary pixel matched when the other boundary dilated by
``disk(bound_pix)`` covers it. All objects of a frame are scored at once as a batch of binary
maps on the tensors' device; only the per-object counts leave it, and the final ratios are taken
in float64 numpy exactly as the numpy path takes them, so equal counts give equal scores.

The disk dilation is a max over rectangles: the disk ``dx^2 + dy^2 <= r^2`` is the union of the
rectangles ``|dx| <= a, |dy| <= floor(sqrt(r^2 - a^2))`` for a = 0..floor(r), the dilation by a
union is the maximum of the dilations, and the dilation of a 0/1 map by a rectangle is a
``max_pool2d`` with stride 1 along y and then along x (a few pooling calls per frame instead of
a KD-tree per object; the unit tests check equality with the numpy path and with
``skimage.morphology.disk``).
Torch is imported inside the functions, so importing this module does not import it.
"""
from __future__ import annotations

import math

import numpy as np

from patchlens.evaluation.davis_metrics import BOUND_TH, bound_pixels


def seg2bmap(masks):
    """One-pixel boundary maps (bool, same shape) of binary masks (..., H, W) (DAVIS
    ``_seg2bmap``, see :func:`patchlens.evaluation.davis_metrics.seg2bmap`)."""
    import torch

    seg = masks.bool()
    e = torch.zeros_like(seg)
    s = torch.zeros_like(seg)
    se = torch.zeros_like(seg)
    e[..., :, :-1] = seg[..., :, 1:]
    s[..., :-1, :] = seg[..., 1:, :]
    se[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[..., -1, :] = seg[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def disk_rectangles(radius: float) -> list[tuple[int, int]]:
    """Half-sizes (a, b) of the rectangles ``|dx| <= a, |dy| <= b`` whose union is the disk
    ``dx^2 + dy^2 <= radius^2`` of integer offsets; only the a where b changes are kept."""
    r2 = radius * radius
    out: list[tuple[int, int]] = []
    for a in range(int(math.floor(radius)), -1, -1):
        b = int(math.isqrt(int(math.floor(r2 - a * a))))
        if not out or b > out[-1][1]:
            out.append((a, b))
    return out


def dilate_disk(maps, radius: float):
    """Dilation (bool, same shape) of binary maps (B, H, W) by the disk of ``radius`` pixels."""
    import torch
    import torch.nn.functional as F

    x = maps.to(torch.float32).unsqueeze(1)                        # (B, 1, H, W)
    out = None
    for a, b in disk_rectangles(radius):
        d = F.max_pool2d(x, (2 * b + 1, 1), stride=1, padding=(b, 0))   # separable
        d = F.max_pool2d(d, (1, 2 * a + 1), stride=1, padding=(0, a))
        out = d if out is None else torch.maximum(out, d)
    return out.squeeze(1) > 0


def _object_maps(labels, n_objects: int, keep):
    """(n_objects, H, W) bool: label map == k for k = 1..n_objects, void removed."""
    import torch

    ks = torch.arange(1, n_objects + 1, device=labels.device).view(-1, 1, 1)
    maps = labels.unsqueeze(0) == ks
    return maps if keep is None else maps & keep


def jf_labels(gt, pred, n_objects: int, void=None, bound_th: float = BOUND_TH
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-object (J, F) float64 numpy of label maps ``gt``/``pred`` (H, W) torch tensors on one
    device, ids 1..n_objects, 0 background, ``void`` (H, W) bool or None: the torch twin of
    :func:`patchlens.evaluation.davis_metrics.jf_labels`."""
    import torch

    keep = None if void is None else ~void.bool()
    g = _object_maps(gt, n_objects, keep)
    p = _object_maps(pred, n_objects, keep)
    r = bound_pixels(tuple(gt.shape), bound_th)
    gb, pb = seg2bmap(g), seg2bmap(p)
    counts = torch.stack([
        (g & p).sum((1, 2)), (g | p).sum((1, 2)),
        pb.sum((1, 2)), gb.sum((1, 2)),
        (pb & dilate_disk(gb, r)).sum((1, 2)), (gb & dilate_disk(pb, r)).sum((1, 2)),
    ]).cpu().numpy().astype(np.float64)
    inter, union, n_fg, n_gt, fg_hit, gt_hit = counts
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    f = np.empty(n_objects)
    for i in range(n_objects):
        if n_fg[i] == 0 and n_gt[i] == 0:
            f[i] = 1.0
        elif n_fg[i] == 0 or n_gt[i] == 0:
            f[i] = 0.0
        else:
            prec, rec = fg_hit[i] / n_fg[i], gt_hit[i] / n_gt[i]
            f[i] = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return j, f
