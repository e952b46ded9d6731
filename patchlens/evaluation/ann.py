"""Approximate cosine nearest-neighbour search (faiss IVF or HNSW) and its recall against exact
search, for memory banks of millions of patches (the dense retrieval of Hummingbird, Balazevic
et al., NeurIPS 2023; ``docs/protocols.md#hummingbird``).

Cosine similarity is the inner product of L2-normalised vectors (as in
:class:`patchlens.evaluation.knn.CosineIndex`, the exact search every task uses by default):

- ``ivf``: ``faiss.IndexIVFFlat`` with an inner-product coarse quantiser of ``nlist`` k-means
  cells (default ``4 sqrt(n)``, at most ``n / 39`` so that every cell has faiss' minimum of 39
  training points), ``nprobe`` cells visited per query; exact inner products inside the cells.
- ``hnsw``: ``faiss.IndexHNSWFlat`` (Malkov & Yashunin 2018) with ``M`` links per node and
  ``efSearch`` candidates per query, inner-product metric.

Both return the same (similarities descending, indices) as the exact index, so a caller can
swap them; :func:`recall_at_k` measures how many of the exact top-k an approximate search found.
"""
from __future__ import annotations

import numpy as np

from patchlens.evaluation.knn import l2_normalize

KINDS = ("ivf", "hnsw")


class ApproxCosineIndex:
    """Approximate cosine search over a bank (n, C): ``kind`` ``"ivf"`` or ``"hnsw"``."""

    def __init__(self, bank: np.ndarray, kind: str = "ivf", nlist: int | None = None,
                 nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128, seed: int = 0):
        import faiss

        bank = l2_normalize(bank)
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"bank must be a non-empty (n, C) array, got {bank.shape}")
        n, d = bank.shape
        self.dim, self.kind = d, kind
        if kind == "ivf":
            nlist = nlist or int(round(4 * np.sqrt(n)))
            nlist = max(1, min(int(nlist), n // 39 or 1))
            self._quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(self._quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = int(seed)
            index.train(bank)
            index.nprobe = min(int(nprobe), nlist)
            self.nlist = nlist
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = int(ef_search)
        else:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        index.add(bank)
        self.index = index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate ``min(k, ntotal)`` most similar bank rows of each query (nq, C):
        similarities (nq, k) float32 descending, indices (nq, k) int64 (-1 where fewer found)."""
        q = l2_normalize(queries)
        k = min(int(k), self.ntotal)
        sims, idx = self.index.search(q, k)
        return sims.astype(np.float32), idx.astype(np.int64)


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> np.ndarray:
    """Per query, the fraction of the exact top-k (nq, k) that the approximate top-k holds."""
    a, e = np.asarray(approx_idx), np.asarray(exact_idx)
    if a.shape != e.shape:
        raise ValueError(f"index arrays differ in shape: {a.shape} vs {e.shape}")
    k = e.shape[1]
    hits = (np.sort(a, axis=1)[:, :, None] == e[:, None, :]).any(axis=1).sum(axis=1)
    return hits / max(k, 1)
