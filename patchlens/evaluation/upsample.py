"""Resizing between the patch grid and pixels without torch (evaluators must not import it).

Up to pixels: ``resize_bilinear`` matches ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)``: separable interpolation matrices, so (h, w, K) -> (H, W, K) costs two
small matrix products; ``upsample_argmax`` (the class map of few-shot segmentation) mixes only the
pixels whose class is in doubt (``bilinear_argmax``), or runs the products on a torch device when
asked (``upsample_argmax_torch``; torch only then); ``resize_nearest`` for label maps. Down to
the grid: ``grid_fraction`` resizes a pixel mask by area (the share of each grid cell it covers,
from the exact overlap of every pixel with every cell), with the separable weights of
``area_matrix``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def corners(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation with half-pixel centres: per output pixel the two input cells it
    mixes (lo, hi; equal at the borders) and the weight of hi (float32)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    return lo, np.minimum(lo + 1, n_in - 1), (x - lo).astype(np.float32)


@lru_cache(maxsize=64)
def interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with half-pixel centres
    (:func:`corners` as a matrix)."""
    lo, hi, w = corners(n_out, n_in)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def resize_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (h, w) or (h, w, K) to (H, W[, K]) bilinearly (align_corners=False)."""
    H, W = size
    my, mx = interp_matrix(H, a.shape[0]), interp_matrix(W, a.shape[1])
    out = np.tensordot(my, a.astype(np.float32, copy=False), axes=(1, 0))  # (H, w, ...)
    return np.moveaxis(np.tensordot(mx, out, axes=(1, 1)), 0, 1)              # (H, W, ...)


def upsample_argmax(a: np.ndarray, size: tuple[int, int], dev: str | None = "cpu") -> np.ndarray:
    """``resize_bilinear(a, size).argmax(-1)`` of scores (h, w, K). ``dev``: ``"cpu"`` or None
    (numpy, :func:`bilinear_argmax`), or a torch device (:func:`upsample_argmax_torch` there;
    ``"cuda"``). Equal up to float32 ties."""
    if dev is None or dev == "cpu":
        return bilinear_argmax(a, size)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(dev)
    return upsample_argmax_torch(t, size).cpu().numpy()


def bilinear_argmax(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The arg-max (H, W) of the bilinear upsampling of scores (h, w, K), computed only where it
    is in doubt. A pixel mixes the four cells around it with non-negative weights that sum to
    1, so where those four share their arg-max c, each by a margin larger than the float32
    rounding of the mix (1e-5 of the largest |score|), the mix's arg-max is c: that pixel is
    assigned directly. The other pixels (near class boundaries) are mixed as
    :func:`resize_bilinear` does: its product over rows, then each pixel's two columns (every
    pixel by its two products where more than 30% are in doubt: noisy scores). Equal to
    ``resize_bilinear(a, size).argmax(-1)`` up to float32 near-ties
    (tests/unit/test_upsample.py)."""
    a = np.asarray(a, np.float32)
    h, w, K = a.shape
    if K == 1:
        return np.zeros(size, np.int64)
    top2 = np.partition(a, K - 2, axis=-1)[..., K - 2:]
    best = a.argmax(-1)
    sure = (top2[..., 1] - top2[..., 0]) > 1e-5 * max(float(np.abs(a).max()), 1e-30)
    ly = corners(size[0], h)[0]
    lx, hx, wx = corners(size[1], w)
    # per cell (i, j): its four corners (i or i+1, j or j+1, clipped) agree and are sure
    ny, nx = np.minimum(np.arange(h) + 1, h - 1), np.minimum(np.arange(w) + 1, w - 1)
    cell = (sure & sure[ny] & sure[:, nx] & sure[ny][:, nx]
            & (best == best[ny]) & (best == best[:, nx]) & (best == best[ny][:, nx]))
    in_doubt = np.take(np.take(~cell, ly, 0), lx, 1)
    if in_doubt.mean() > 0.3:  # mostly in doubt: the two products cost less than the gathers
        return resize_bilinear(a, size).argmax(-1)
    out = np.take(np.take(best, ly, 0), lx, 1)
    doubt = np.flatnonzero(in_doubt)
    if doubt.size:
        Y, X = np.divmod(doubt, size[1])
        rows = np.tensordot(interp_matrix(size[0], h), a, axes=(1, 0)).reshape(-1, K)  # resize's
        left = np.take(rows, Y * w + lx[X], axis=0)   # (H * w, K): its product over rows
        right = np.take(rows, Y * w + hx[X], axis=0)
        fx = wx[X][:, None]
        left *= 1 - fx
        right *= fx
        left += right
        out.reshape(-1)[doubt] = left.argmax(-1)
    return out


def upsample_argmax_torch(t, size: tuple[int, int]):
    """The arg-max (H, W) of the bilinear upsampling of a torch tensor (h, w, K) of scores, on its
    device: the two separable products of :func:`resize_bilinear`, in float32."""
    import torch

    H, W = size
    my = torch.from_numpy(interp_matrix(H, t.shape[0])).to(t.device)
    mx = torch.from_numpy(interp_matrix(W, t.shape[1])).to(t.device)
    up = torch.einsum("Hh,hwk->Hwk", my, t.float())
    up = torch.einsum("Ww,Hwk->HWk", mx, up)
    return up.argmax(-1)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (h, w) -> (H, W), pixel centres."""
    H, W = size
    ys = np.minimum(((np.arange(H) + 0.5) * a.shape[0] / H).astype(int), a.shape[0] - 1)
    xs = np.minimum(((np.arange(W) + 0.5) * a.shape[1] / W).astype(int), a.shape[1] - 1)
    return a[ys[:, None], xs[None, :]]


@lru_cache(maxsize=64)
def area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of area resizing: row i holds the overlap of each input pixel
    [j, j+1) with output cell i, [i, i+1) * n_in / n_out, divided by the cell length (rows sum
    to 1). ``A_y @ M @ A_x.T`` resizes an (H, W) map to (h, w) by area."""
    scale = n_in / n_out
    start = np.arange(n_out)[:, None] * scale
    pix = np.arange(n_in)[None, :]
    overlap = np.minimum(start + scale, pix + 1) - np.maximum(start, pix)
    return (np.clip(overlap, 0, None) / scale).astype(np.float32)


def grid_fraction(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction (h, w) of each grid cell covered by a (H, W) mask (bool or weights in [0, 1])."""
    ay, ax = area_matrix(grid[0], mask.shape[0]), area_matrix(grid[1], mask.shape[1])
    return ay @ mask.astype(np.float32) @ ax.T
