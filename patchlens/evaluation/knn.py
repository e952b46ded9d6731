"""Cosine k-nearest-neighbour search (faiss or torch) and DINO's temperature-weighted vote.

Cosine similarity is the inner product of L2-normalised float32 vectors, searched exactly:
by default with ``faiss.IndexFlatIP`` on the CPU (BLAS-bound; faiss is imported when the first
index is built, so modules that only need :func:`l2_normalize` do not pay for it); on the device
the caller passes (``device="cuda"`` where the job asks for a GPU and has one), as a torch
matmul + ``topk`` over query chunks (``backend="torch"``; the same code runs on the CPU in the
tests, which compare it with faiss: same neighbours up to float32 ties). Searches under several
feature variants share one product in :mod:`patchlens.evaluation.similarity`. The vote follows the
weighted k-NN classifier of DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers", ``eval_knn.py``; after Wu et al. 2018): each of the k nearest support
items votes for its label(s) with weight ``exp(sim / T)``.
"""
from __future__ import annotations

import numpy as np

from patchlens.errors import ConfigError

_BATCH = 8192  # queries per faiss call: bounds the (batch, k) result arrays, not the result


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (..., C) scaled to unit L2 norm, as C-contiguous float32 (zero rows stay 0)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, eps), dtype=np.float32)


_CHUNK_BYTES = {"cpu": 256 * 2 ** 20, "cuda": 2 * 2 ** 30}  # bound on one (chunk, n) sim block


def torch_topk(bank, queries, k: int, chunk_bytes: int):
    """Exact top-k inner products of L2-normalised torch tensors: queries (nq, C) against the bank
    (n, C) in query chunks whose (chunk, n) similarity block stays under ``chunk_bytes``.
    Returns numpy (sims float32 descending, indices int64)."""
    import torch

    n = bank.shape[0]
    step = max(1, chunk_bytes // (4 * max(n, 1)))
    sims, idx = [], []
    for s in range(0, queries.shape[0], step):
        v, i = torch.topk(queries[s:s + step] @ bank.T, k, dim=1, largest=True, sorted=True)
        sims.append(v.cpu())
        idx.append(i.cpu())
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return torch.cat(sims).numpy().astype(np.float32), torch.cat(idx).numpy().astype(np.int64)


class CosineIndex:
    """Exact cosine-similarity search over a support bank (n, C).

    ``backend``: ``"faiss"`` (``IndexFlatIP``; on the GPUs when the installed faiss has them),
    ``"torch"`` (matmul + top-k on ``device``), or ``None``: faiss on the CPU (``device``
    ``"cpu"``, the default), torch on any other device the caller passes (``"cuda"``)."""

    def __init__(self, bank: np.ndarray, backend: str | None = None, device: str = "cpu"):
        bank = l2_normalize(bank)
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"support bank must be a non-empty (n, C) array, got {bank.shape}")
        self.dim = bank.shape[1]
        device = str(device or "cpu")
        backend = backend or ("faiss" if device == "cpu" else "torch")
        if backend not in ("faiss", "torch"):
            raise ValueError(f"backend must be faiss or torch, got {backend!r}")
        self.backend, self.device = backend, device
        if backend == "torch":
            import torch

            self.bank = torch.as_tensor(bank).to(device)
            self._n = bank.shape[0]
            return
        import faiss

        self.index = faiss.IndexFlatIP(self.dim)
        if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:  # same exact search, on the GPUs
            self.index = faiss.index_cpu_to_all_gpus(self.index)
        self.index.add(bank)

    @property
    def ntotal(self) -> int:
        return self._n if self.backend == "torch" else int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``min(k, ntotal)`` most cosine-similar bank rows of each query (nq, C):
        similarities (nq, k) float32, descending, and bank indices (nq, k) int64."""
        q = l2_normalize(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (nq, {self.dim}), got {q.shape}")
        k = min(int(k), self.ntotal)
        if self.backend == "torch":
            import torch

            return torch_topk(self.bank, torch.as_tensor(q).to(self.device), k,
                              _CHUNK_BYTES.get(self.device.split(":")[0], _CHUNK_BYTES["cpu"]))
        sims = np.empty((q.shape[0], k), np.float32)
        idx = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], _BATCH):
            sims[s:s + _BATCH], idx[s:s + _BATCH] = self.index.search(q[s:s + _BATCH], k)
        return sims, idx


def weighted_vote(sims: np.ndarray, idx: np.ndarray, bank_labels: np.ndarray, n_classes: int,
                  temperature: float) -> np.ndarray:
    """Class scores (nq, n_classes) float64 from the temperature-weighted vote of DINO's k-NN.

    Protocol (Caron et al. 2021, ``eval_knn.py``): neighbour j of a query, with cosine similarity
    s_j, votes for its class with weight exp(s_j / T); the score of class c is the sum of the
    weights of the neighbours labelled c. Here the scores are divided by the sum of all k weights,
    so that they are weighted class frequencies in [0, 1] (one positive factor per query: the
    argmax is DINO's, and scores of different queries are comparable, which rankings such as a
    multi-label AP need). ``bank_labels`` is either (n,) int class indices (single label) or
    (n, n_classes) 0/1 targets (multi-label: a neighbour votes for each of its classes). The
    exponent is shifted by the row maximum for overflow safety, which the division cancels.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    w = np.exp((sims.astype(np.float64) - sims.max(axis=1, keepdims=True)) / temperature)
    w /= w.sum(axis=1, keepdims=True)
    nq = sims.shape[0]
    bank_labels = np.asarray(bank_labels)
    if bank_labels.ndim == 1:
        flat = (np.arange(nq)[:, None] * n_classes + bank_labels[idx]).ravel()
        return np.bincount(flat, weights=w.ravel(), minlength=nq * n_classes).reshape(nq, n_classes)
    scores = np.zeros((nq, n_classes))
    for j in range(idx.shape[1]):
        scores += w[:, j:j + 1] * bank_labels[idx[:, j]]
    return scores


def weighted_vote_torch(sims, idx, bank_labels, n_classes: int, temperature: float):
    """:func:`weighted_vote` of torch tensors on their device (single-label ``bank_labels`` (n,)
    int): float64 class scores (nq, n_classes), the same computation (equal to float64 rounding)."""
    import torch

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = sims.double()
    w = torch.exp((s - s.amax(1, keepdim=True)) / temperature)
    w = w / w.sum(1, keepdim=True)
    scores = torch.zeros((s.shape[0], n_classes), dtype=torch.float64, device=s.device)
    return scores.scatter_add_(1, bank_labels[idx], w)


def knn_scores(index: CosineIndex, bank_labels: np.ndarray, queries: np.ndarray, n_classes: int,
               k: int, temperature: float) -> np.ndarray:
    """Search + vote: class scores (nq, n_classes) of every query row (:func:`weighted_vote`)."""
    sims, idx = index.search(queries, k)
    return weighted_vote(sims, idx, bank_labels, n_classes, temperature)


def check_vote_params(params: dict, task: str) -> tuple[int, float]:
    """Validated ``k`` (int >= 1) and ``temperature`` (> 0) of a task's params."""
    k, t = params.get("k"), params.get("temperature")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"tasks.{task}.params.k = {k!r}: expected an integer >= 1")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
        raise ConfigError(f"tasks.{task}.params.temperature = {t!r}: expected a number > 0")
    return int(k), float(t)
