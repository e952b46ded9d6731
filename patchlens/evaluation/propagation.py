"""DINO's video label propagation in numpy: the protocol of the tracking task
(:mod:`patchlens.tasks.tracking`, steps 1-4 of its protocol; ``docs/protocols.md#tracking``).

Caron et al., ICCV 2021 "Emerging Properties in Self-Supervised Vision Transformers", reference
code ``eval_video_segmentation.py`` of github.com/facebookresearch/dino (after Jabri et al.,
NeurIPS 2020): the first frame's instance mask as a one-hot seed on the patch grid
(:func:`seed_labels`); every later frame takes soft labels from the first frame and the
``n_last_frames`` preceding ones (:func:`track`): cosine similarities within a square window of
``radius`` patches, the ``topk`` most similar sources over all context frames jointly, weights
softmax(sim / temperature) (:func:`propagate`); the soft map resized bilinearly to the frame,
channels min-max normalised, argmax (:func:`labels_to_mask`).

Cost: per target frame one (P x C) by (C x n_ctx P) product, done in bands of target rows whose
sources are only the rows within the radius (:func:`band_rows`). Pure numpy; the torch twin on
any device is :mod:`patchlens.evaluation.propagation_torch`.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from functools import lru_cache

import numpy as np

from patchlens.device import matmul
from patchlens.evaluation.bands import CPU_BAND_BUDGET, band_rows
from patchlens.evaluation.knn import l2_normalize
from patchlens.evaluation.upsample import resize_bilinear, resize_nearest

BAND_BUDGET = CPU_BAND_BUDGET  # similarity entries per band of the numpy path


@lru_cache(maxsize=8)
def window_mask(h: int, w: int, radius: int) -> np.ndarray:
    """(P, P) bool, P = h*w: source patch within ``radius`` rows and columns of the target patch
    (the square neighbourhood of DINO's ``restrict_neighborhood``). Built once per grid."""
    y, x = np.divmod(np.arange(h * w), w)
    m = (np.abs(y[:, None] - y[None, :]) <= radius) & (np.abs(x[:, None] - x[None, :]) <= radius)
    m.setflags(write=False)
    return m


def topk_indices(x: np.ndarray, k: int, block: int) -> np.ndarray:
    """Column indices (n, k) of the ``k`` largest entries of every row of ``x`` (n, m), unordered.

    Exact two-stage selection: the k blocks (``block`` consecutive columns) with the largest
    maxima hold a set of k largest entries (any entry outside them is exceeded by k block maxima),
    so a full-row ``argpartition`` is only run on those k * block candidates. Much faster than
    ``argpartition`` over long rows, since a block maximum is a vectorised reduction.
    """
    n, m = x.shape
    if k >= m:
        return np.broadcast_to(np.arange(m), (n, m))
    if m % block or m // block <= 2 * k:
        return np.argpartition(-x, k - 1, axis=1)[:, :k]
    bmax = np.maximum.reduceat(x, np.arange(0, m, block), axis=1)   # (n, m // block)
    blk = np.argpartition(-bmax, k - 1, axis=1)[:, :k]
    cols = (blk[:, :, None] * block + np.arange(block)).reshape(n, k * block)
    cand = np.take_along_axis(x, cols, axis=1)
    return np.take_along_axis(cols, np.argpartition(-cand, k - 1, axis=1)[:, :k], axis=1)


def propagate(target: np.ndarray, ctx_feats: np.ndarray, ctx_labels: np.ndarray,
              grid: tuple[int, int], radius: int, topk: int, temperature: float) -> np.ndarray:
    """Soft labels of one target frame from its context frames (DINO label propagation, step 3).

    target (P, C) and ctx_feats (n, P, C) L2-normalised, ctx_labels (n, P, K); returns (P, K).
    Each target patch takes the ``topk`` most similar source patches among all context frames
    within ``radius`` patches (``radius <= 0``: anywhere), weighted by softmax(sim / temperature).
    """
    n, _, C = ctx_feats.shape
    w = grid[1]

    def sims(a, b, sa, sb):
        yield ["_"], matmul(target[a * w:b * w], ctx_feats[:, sa * w:sb * w].reshape(-1, C).T)

    return _propagate_bands(grid, n, sims, {"_": ctx_labels}, radius, topk, temperature)["_"]


def propagate_variants(target: list, ctx: list, ctx_labels: dict, grid: tuple[int, int],
                       radius: int, topk: int, temperature: float, aff) -> dict:
    """:func:`propagate` for every variant of ``aff`` (a
    :class:`~patchlens.evaluation.affinity.VariantAffinity`) at once: ``target`` and each of
    ``ctx`` are frames prepared by ``aff.prepare`` (raw features), ``ctx_labels`` {variant:
    (n, P, K)} each variant's own context labels; returns {variant: (P, K)}. One product per
    band serves raw and every drop{m} (one more for zscore). A torch-backed ``aff`` runs the
    band loop of :mod:`patchlens.evaluation.propagation_torch` on its device."""
    w = grid[1]

    def sims(a, b, sa, sb):
        src = aff.cat([aff.rows(c, slice(sa * w, sb * w)) for c in ctx])
        yield from aff.similarities(aff.rows(target, slice(a * w, b * w)), src)

    if aff.torch:
        from patchlens.evaluation import propagation_torch

        return propagation_torch.propagate_bands(grid, len(ctx), sims, ctx_labels, radius, topk,
                                                 temperature, aff.device)
    return _propagate_bands(grid, len(ctx), sims, ctx_labels, radius, topk, temperature)


def _propagate_bands(grid, n: int, sims, labels: dict, radius: int, topk: int,
                     temperature: float) -> dict:
    """The band loop of :func:`propagate`: ``sims(a, b, sa, sb)`` yields (variant names,
    similarities (nq, n * ns) of target rows a..b against the context rows sa..sb,
    context-major); {name: (P, K)} soft labels from each name's ``labels`` (n, P, K)."""
    h, w = grid
    P = h * w
    win = window_mask(h, w, radius) if radius > 0 else None
    rows = band_rows(h, w, n, radius, BAND_BUDGET)
    out = {v: np.empty((P, lab.shape[-1]), np.float32) for v, lab in labels.items()}
    for a in range(0, h, rows):
        b = min(h, a + rows)
        sa, sb = (max(0, a - radius), min(h, b + radius)) if radius > 0 else (0, h)
        nq, ns = (b - a) * w, (sb - sa) * w
        bias = (np.where(win[a * w:b * w, sa * w:sb * w], 0, -np.inf).astype(np.float32)
                if win is not None else None)                      # -inf outside the window
        for names, sim in sims(a, b, sa, sb):                      # (nq, n*ns)
            if bias is not None:
                sim.reshape(nq, n, ns)[...] += bias[:, None, :]
            idx = topk_indices(sim, topk, block=w)                 # (nq, k)
            val = np.take_along_axis(sim, idx, axis=1)
            wgt = np.exp((val - val.max(axis=1, keepdims=True)) / temperature)
            wgt /= wgt.sum(axis=1, keepdims=True)
            for v in names:
                lab = labels[v][:, sa * w:sb * w].reshape(n * ns, -1)
                out[v][a * w:b * w] = np.einsum("qk,qkc->qc", wgt, lab[idx])
    return out


def seed_labels(instance: np.ndarray, ids: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One-hot (h, w, len(ids)+1) label map of an instance mask at patch resolution.

    Nearest-neighbour resize to the grid (pixel centres; DINO resizes the first-frame PNG with
    PIL's nearest filter); channel 0 = background (also void and ids not in ``ids``), channel i =
    object ``ids[i-1]``.
    """
    lut = np.zeros(256, np.int64)
    lut[np.asarray(ids, np.int64)] = np.arange(1, len(ids) + 1)
    small = lut[resize_nearest(np.asarray(instance), grid)]
    return np.eye(len(ids) + 1, dtype=np.float32)[small]


def labels_to_mask(probs: np.ndarray, size: tuple[int, int], norm_mask: bool = True) -> np.ndarray:
    """Predicted index map (H, W) from soft labels (h, w, K) (step 4): bilinear resize to
    ``size``, optional per-channel min-max normalisation (channels whose maximum is positive;
    DINO's ``norm_mask``; a constant positive channel becomes 1), argmax over channels (ties go
    to the lower channel). Works one channel at a time on contiguous (H, W) planes."""
    best = idx = None
    for k in range(probs.shape[-1]):
        up = resize_bilinear(np.ascontiguousarray(probs[..., k]), size)
        if norm_mask:
            lo, hi = float(up.min()), float(up.max())
            if hi > 0:
                if hi > lo:
                    up -= lo
                    up *= 1.0 / (hi - lo)
                else:
                    up.fill(1.0)
        if best is None:
            best, idx = up, np.zeros(up.shape, np.int64)
        else:
            better = up > best
            idx[better] = k
            np.maximum(best, up, out=best)
    return idx


def track(frames: Iterable[np.ndarray], seed: np.ndarray, n_last_frames: int = 7,
          radius: int = 12, topk: int = 5, temperature: float = 0.1) -> Iterator[np.ndarray]:
    """Propagate ``seed`` (h, w, K) from the first of ``frames`` (each (h, w, C) features) through
    the rest; yields the soft label map (h, w, K) of frames 1, 2, ... in order (steps 2-3)."""
    it = iter(frames)
    first = next(it)
    h, w, _ = first.shape
    K = seed.shape[-1]
    f0 = l2_normalize(first).reshape(h * w, -1)
    l0 = np.asarray(seed, np.float32).reshape(h * w, K)
    queue: deque = deque(maxlen=n_last_frames)
    for frame in it:
        ft = l2_normalize(frame).reshape(h * w, -1)
        feats = np.stack([f0] + [f for f, _ in queue])
        labels = np.stack([l0] + [lab for _, lab in queue])
        lab = propagate(ft, feats, labels, (h, w), radius, topk, temperature)
        queue.append((ft, lab))
        yield lab.reshape(h, w, K)


def track_variants(frames: Iterable, seed: np.ndarray, aff, n_last_frames: int = 7,
                   radius: int = 12, topk: int = 5, temperature: float = 0.1) -> Iterator[dict]:
    """:func:`track` for every variant of ``aff`` (a
    :class:`~patchlens.evaluation.affinity.VariantAffinity`) from the raw ``frames`` (each
    (h, w, C)): yields {variant: soft label map (h, w, K)} of frames 1, 2, ...; each variant
    propagates its own labels, the products of a band are shared by the variants. In numpy, or
    with a torch-backed ``aff`` as tensors on its device."""
    if aff.torch:
        import torch

        stack, as_array = torch.stack, torch.as_tensor
        l0 = torch.as_tensor(np.asarray(seed, np.float32)).to(aff.device)
    else:
        stack, as_array = np.stack, np.asarray
        l0 = np.asarray(seed, np.float32)
    it = iter(frames)
    first = as_array(next(it))
    h, w, C = first.shape
    K = seed.shape[-1]
    p0 = aff.prepare(first.reshape(h * w, C))
    l0 = l0.reshape(h * w, K)
    queue: deque = deque(maxlen=n_last_frames)
    for frame in it:
        pt = aff.prepare(as_array(frame).reshape(h * w, C))
        ctx = [p0] + [p for p, _ in queue]
        labels = {v: stack([l0] + [lab[v] for _, lab in queue]) for v in aff.names}
        lab = propagate_variants(pt, ctx, labels, (h, w), radius, topk, temperature, aff)
        queue.append((pt, lab))
        yield {v: x.reshape(h, w, K) for v, x in lab.items()}
