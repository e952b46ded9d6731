"""Streaming per-channel moments (count, mean, M2) in float64, merged with Chan et al.'s parallel
update (Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise algorithm for computing
sample variances"): the statistics behind the ``drop{m}`` / ``zscore`` variants
(``docs/protocols.md``, Vanyan et al. 2024, arXiv 2401.00463), accumulated batch by batch so
memory is bounded by one batch and no file is read twice.

Within one batch the moments come from float64 sums (``sum x`` and ``sum x^2``): for float16
tokens (11 significant bits) every product and every partial sum of a batch is exact or within
one float64 rounding, so ``M2_b = sum x^2 - (sum x)^2 / n`` loses nothing that matters unless
``mean^2 / var`` exceeds ~1e8; batches are then merged with Chan's update, which is stable.
"""
from __future__ import annotations

import numpy as np


def merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan's pairwise merge of two (count, mean, M2) triples (mean/M2 arrays, float64)."""
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta ** 2 * (n_a * n_b / n)


def batch_moments(x: np.ndarray):
    """(count, mean, M2) of the rows of ``x`` (n, C), float64 (two passes over the batch: the
    exact centred sum of squares)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    if n == 0:
        return 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    mean = x.mean(0)
    return n, mean, ((x - mean) ** 2).sum(0)


def merge_moments(n_a, mean_a, m2_a, x: np.ndarray):
    """Fold samples ``x`` (n, C) into running (count, mean, M2) (Chan et al. 1979)."""
    return merge(n_a, mean_a, m2_a, *batch_moments(x))


def row_sums(tokens: np.ndarray):
    """Per image and layer, the float64 sums of every patch token's channels and of their
    squares: tokens (b, L, P, C) -> (s, q), each (b, L, C). The extractor computes the same on
    the device (:func:`patchlens.features.extract.forward_batch`)."""
    b, L, P, C = tokens.shape
    s, q = np.empty((b, L, C)), np.empty((b, L, C))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite input: the caller refuses it
        for li in range(L):  # one layer at a time: a small float64 copy
            x = tokens[:, li].astype(np.float64)
            s[:, li] = x.sum(1)
            q[:, li] = np.einsum("bpc,bpc->bc", x, x)
    return s, q


class Moments:
    """Running (count, mean, M2) per (group, layer) over channels, fed with per-image sums."""

    def __init__(self, groups: list[str], layers: int, channels: int):
        self.groups = list(groups)
        self.count = np.zeros((len(groups), layers), np.int64)
        self.mean = np.zeros((len(groups), layers, channels))
        self.m2 = np.zeros((len(groups), layers, channels))

    def add_sums(self, g: int, n: int, s: np.ndarray, q: np.ndarray) -> None:
        """Fold ``n`` tokens per layer with channel sums ``s`` and sums of squares ``q``
        (layer, C) into group ``g`` (every layer at once)."""
        if n == 0:
            return
        with np.errstate(invalid="ignore", over="ignore"):
            mean_b = s / n
            m2_b = np.maximum(q - s * mean_b, 0.0)
            n_a = int(self.count[g, 0])
            _, self.mean[g], self.m2[g] = merge(n_a, self.mean[g], self.m2[g], n, mean_b, m2_b)
        self.count[g] += n


def pooled(count: np.ndarray, mean: np.ndarray, m2: np.ndarray, rows):
    """Pool groups ``rows`` of per-group moments (group, layer, C) -> (count (layer,), mean,
    M2 (layer, C)) by Chan merges in the order given."""
    L, C = mean.shape[1:]
    n, mu, q = np.zeros(L, np.int64), np.zeros((L, C)), np.zeros((L, C))
    for g in rows:
        for li in range(L):
            n[li], mu[li], q[li] = merge(int(n[li]), mu[li], q[li], int(count[g, li]),
                                         mean[g, li], m2[g, li])
    return n, mu, q
