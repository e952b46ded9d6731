"""Cosine top-k for every feature variant of a layer from one similarity product (issue 20).

A task asks for its neighbours under a set of variants (:class:`~patchlens.features.variants.
VariantSpec`: ``raw``, ``drop{m}``, ``zscore``) and never computes a similarity itself:

    index = VariantIndex(bank, {"raw": ..., "drop4": ..., "zscore": ...}, device="cpu")
    found = index.search(queries, k)        # {name: (sims (nq, k) desc, idx (nq, k))}

Exactness. ``drop{m}`` removes the channel set D_m, so its cosine follows from a product over the
kept channels: q'.s' = sum over c not in D_m of q_c s_c, and |q'|^2 = |q|^2 - |q_D|^2. The sets of
one layer are nested (the m channels of largest variance: D_1 < D_2 < ... < D_M), so the product
is computed once per query chunk, block by block: first over the channels kept by the largest m
(drop_M's product), then adding the rank-(m_i - m_{i+1}) products of the channels released by
each smaller m, down to ``raw`` (all channels). Every variant's product is thus a sum of products
over its own channels: no large term is subtracted (MAE-like features, whose dropped channels
carry most of the norm, lose no precision), and raw plus every ``drop{m}`` cost one C-channel
product. ``zscore`` is one more product, of the mean-centred, scaled features. The cosine is the
product divided by the two norms (computed per variant, in float64): the normalisation is applied
to the product, not to the inputs, which is what lets one product serve several variants.
Results equal cosine k-NN on the transformed, L2-normalised features (:class:`~patchlens.
evaluation.knn.CosineIndex`): same scores up to float32 rounding, same neighbours up to float ties
(tests/unit/test_similarity.py, against a float64 reference).

Backends: ``"faiss"`` (BLAS products, faiss's C++ heaps for the top-k; the CPU default, no
torch: the product is computed and consumed in cache-sized tiles of ``TILE`` query rows x bank
columns, one worker per job thread, so no similarity block goes through memory) and ``"torch"``
(any device; on CUDA the features stay in their stored float16 and the products accumulate and
come out in float32 (tensor cores), the top-k is chunked and kept on the device; the tests run
it on the CPU in float32). Protocol: docs/protocols.md#fewshot_seg
(DINO's cosine k-NN, Caron et al. 2021; variants after Vanyan et al. 2024, Sec. 5).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from patchlens.device import job_threads, row_slices
from patchlens.features.variants import VariantSpec

CHUNK_BYTES = {"cpu": 128 * 2 ** 20, "cuda": 2 * 2 ** 30}  # one (chunk, n) float32 product block
TILE = (768, 384)  # CPU: (query rows, bank columns) of one product block kept in cache
EPS = 1e-12  # as l2_normalize: a zero vector has norm max(0, EPS) and cosine 0 with everything


@dataclass
class _Family:
    """Variants served by one product: a transform (None or a zscore spec) and a chain of
    ``steps``: (channel block to add, names emitted after adding it)."""
    zscore: VariantSpec | None
    steps: list[tuple[np.ndarray, list[str]]]


def plan_families(variants: dict[str, VariantSpec], channels: int) -> list[_Family]:
    """Group ``variants`` into products: raw and every drop{m} whose dropped sets are nested
    share one (blocks from the largest m down to raw); each zscore variant has its own."""
    fams = [_Family(s, [(np.arange(channels), [n])]) for n, s in variants.items()
            if s.kind == "zscore"]
    sets = sorted(((frozenset(s.drop.tolist()) if s.kind == "drop" else frozenset(), n)
                   for n, s in variants.items() if s.kind != "zscore"),
                  key=lambda t: (-len(t[0]), t[1]))
    chain: list[tuple[frozenset, list[str]]] = []
    for d, name in sets:
        if chain and chain[-1][0] == d:
            chain[-1][1].append(name)
        elif chain and d <= chain[-1][0]:
            chain.append((d, [name]))
        else:  # not nested in the chain (statistics of another layer): a product of its own
            if chain:
                fams.append(_chain_family(chain, channels))
            chain = [(d, [name])]
    if chain:
        fams.append(_chain_family(chain, channels))
    return fams


def _chain_family(chain, channels: int) -> _Family:
    steps, prev = [], frozenset(range(channels))
    for d, names in chain:
        steps.append((np.array(sorted(prev - d), np.int64), names))
        prev = d
    return _Family(None, steps)


def family_features(fam: _Family, x, torch_backend: bool = False, device: str = "cpu",
                    half: bool = False):
    """x (n, C) as a family's product sees it: raw, or zscore-transformed; float32 numpy, or
    (``torch_backend``) a tensor on ``device``: float16 with ``half`` (raw features, which are
    stored float16: nothing is lost), float32 for zscore features (see :func:`mm32`)."""
    if not torch_backend:
        x = np.asarray(x, np.float32)
        return x if fam.zscore is None else np.asarray(fam.zscore.apply(x), np.float32)
    import torch

    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    t = t.to(device)
    if fam.zscore is not None:
        mean = torch.as_tensor(fam.zscore.mean, device=device)
        std = torch.as_tensor(fam.zscore.std, device=device)
        return ((t.double() - mean) / std).float()  # not float16 values: see mm32
    return t.to(torch.float16 if half else torch.float32)


def family_norms(fam: _Family, x, torch_backend: bool = False) -> list:
    """Inverse norms of x (float64 sums of squares over each step's kept channels, cumulated
    along the family's chain), one float32 array per step: 1 / max(|x'|, EPS)."""
    out, acc = [], 0.0
    for block, _ in fam.steps:
        if not torch_backend:
            acc = acc + np.square(x[:, block], dtype=np.float64).sum(1)
            out.append((1.0 / np.maximum(np.sqrt(acc), EPS)).astype(np.float32))
        else:
            import torch

            acc = acc + x[:, torch.as_tensor(block, device=x.device)].double().square().sum(1)
            out.append((1.0 / acc.sqrt().clamp_min(EPS)).float())
    return out


def add_product(g: np.ndarray, a: np.ndarray, bt: np.ndarray) -> None:
    """g += a @ bt in place (g (m, n) C-contiguous float32, a (m, c), bt (c, n)): BLAS sgemm
    with beta = 1, one pass over g instead of a product written and then added."""
    from scipy.linalg.blas import sgemm

    out = sgemm(1.0, bt.T, a.T, beta=1.0, c=g.T, overwrite_c=True)  # g.T = bt.T a.T + g.T
    if not np.shares_memory(out, g):  # BLAS could not work in place: copy back
        g[...] = out.T


class _Heaps:
    """faiss's top-k heaps (descending) of ``nq`` rows, filled block by block: ``add`` pushes a
    (rows, cols) float32 block whose first row is query ``r0`` and first column bank item
    ``j0``; ``result`` orders them. Threads may fill disjoint rows at once."""

    def __init__(self, nq: int, k: int):
        import faiss

        self.vals = np.empty((nq, k), np.float32)
        self.idx = np.empty((nq, k), np.int64)
        self.h = faiss.float_minheap_array_t()
        self.h.k, self.h.nh = k, nq
        self.h.val, self.h.ids = faiss.swig_ptr(self.vals), faiss.swig_ptr(self.idx)
        self.h.heapify()
        self._ptr = faiss.swig_ptr

    def add(self, block: np.ndarray, r0: int, j0: int) -> None:
        self.h.addn(block.shape[1], self._ptr(block), int(j0), int(r0), block.shape[0])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.h.reorder()
        return self.vals, self.idx


def _fill_heaps(sl: slice, qb: list, tiles: list, heaps: list, tile: tuple[int, int]) -> None:
    """One worker's part of the CPU pass: query rows ``sl`` of the chain's channel blocks ``qb``
    against every column tile of the bank (``tiles``: [(j0, [blocks], [inverse norms])]), into
    each step's ``heaps``, a (rows, cols) block at a time."""
    rows, cols = tile
    g = np.empty((rows, cols), np.float32)
    buf = np.empty((rows, cols), np.float32)
    for r0 in range(sl.start, sl.stop, rows):
        qr = [b[r0:min(r0 + rows, sl.stop)] for b in qb]
        for j0, blocks, invs in tiles:
            m, w = qr[0].shape[0], blocks[0].shape[1]
            gt = g[:m, :w] if w == cols else np.empty((m, w), np.float32)
            bt = buf[:m, :w] if w == cols else np.empty((m, w), np.float32)
            for i, (a, bank_t, inv, heap) in enumerate(zip(qr, blocks, invs, heaps)):
                if i:
                    add_product(gt, a, bank_t)
                else:
                    np.matmul(a, bank_t, out=gt)
                heap.add(np.multiply(gt, inv[None, :], out=bt), r0, j0)


@contextlib.contextmanager
def _one_thread_each():
    """BLAS and faiss's OpenMP on one thread for the duration: the CPU pass runs one worker
    per core, each on its own rows."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        faiss.omp_set_num_threads(before)


class VariantIndex:
    """Exact cosine top-k of queries against a bank (n, C) under every variant of ``variants``
    ({name: :class:`VariantSpec`}), raw and the drop{m} from one product, zscore from one more.

    ``device``: ``"cpu"`` (default) or a torch device (``"cuda"``); ``backend``: ``"faiss"`` or
    ``"torch"`` (default: faiss on the CPU, torch elsewhere). The torch backend on CUDA keeps the
    bank in its float16 (``half=True``, the default there)."""

    def __init__(self, bank, variants: dict[str, VariantSpec], device: str = "cpu",
                 backend: str | None = None, half: bool | None = None,
                 chunk_bytes: int | None = None, tile: tuple[int, int] = TILE):
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"support bank must be a non-empty (n, C) array, got {bank.shape}")
        if not variants:
            raise ValueError("no variant asked for")
        self.device = str(device)
        self.backend = backend or ("faiss" if self.device == "cpu" else "torch")
        if self.backend not in ("faiss", "torch"):
            raise ValueError(f"backend must be faiss or torch, got {self.backend!r}")
        if self.backend == "faiss" and self.device != "cpu":
            raise ValueError("the faiss backend runs on the CPU; use backend='torch'")
        self.n, self.dim = bank.shape
        self.names = list(variants)
        self.families = plan_families(variants, self.dim)
        kind = self.device.split(":")[0]
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES.get(kind, CHUNK_BYTES["cpu"])
        self.half = (kind == "cuda") if half is None else half
        self.tile = (max(1, int(tile[0])), max(1, int(tile[1])))
        self._banks = [self._prepare(f, bank) for f in self.families]

    # -- per family: the bank's blocks and each variant's inverse norms ------------------------
    def _features(self, fam: _Family, x):
        return family_features(fam, x, self.backend == "torch", self.device, self.half)

    def _norms(self, fam: _Family, x) -> list:
        return family_norms(fam, x, self.backend == "torch")

    def _prepare(self, fam: _Family, bank):
        """torch: the chain's blocks (|b|, n) and the inverse norms; faiss: both cut into the
        column tiles of the CPU pass, [(j0, [blocks (|b|, cols)], [inverse norms (cols,)])]."""
        x = self._features(fam, bank)
        if self.backend == "faiss":
            inv = self._norms(fam, x)
            cols = self.tile[1]
            return [(j0, [np.ascontiguousarray(x[j0:j0 + cols, b].T) for b, _ in fam.steps],
                     [i[j0:j0 + cols] for i in inv]) for j0 in range(0, self.n, cols)]
        import torch

        blocks = [x[:, torch.as_tensor(b, device=x.device)].T.contiguous() for b, _ in fam.steps]
        return blocks, self._norms(fam, x)

    # -- search ---------------------------------------------------------------------------------
    def search(self, queries, k: int, as_tensors: bool = False) -> dict:
        """{name: (sims (nq, k) float32 descending, idx (nq, k) int64)} for every variant;
        ``k`` is capped at the bank size. ``as_tensors`` (torch backend): torch tensors on the
        device instead of numpy arrays."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (nq, {self.dim}), got {tuple(queries.shape)}")
        k = min(int(k), self.n)
        if self.backend == "faiss":
            return self._search_faiss(queries, k)
        step = max(1, self.chunk_bytes // (4 * self.n))
        parts: dict[str, list] = {n: [] for n in self.names}
        for s in range(0, queries.shape[0], step):
            for fam, (blocks, inv_s) in zip(self.families, self._banks):
                q = self._features(fam, queries[s:s + step])
                for name, res in self._chunk_torch(fam, q, blocks, inv_s, k):
                    parts[name].append(res)
        return {n: self._join(parts[n], k, as_tensors) for n in self.names}

    def _search_faiss(self, queries, k: int) -> dict:
        """The CPU pass, tile by tile: a (rows, cols) block of the family's product stays in
        cache while each chain step adds its channels (BLAS, beta = 1) and each variant scales
        it by the bank's inverse norms into faiss's heaps. One worker per thread
        (:func:`patchlens.device.job_threads`), each on its own query rows
        (:func:`_fill_heaps`), BLAS on one thread each."""
        if queries.shape[0] == 0:
            return {n: (np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
                    for n in self.names}
        out = {}
        threads = job_threads()
        for fam, tiles in zip(self.families, self._banks):
            q = self._features(fam, queries)
            inv_q = self._norms(fam, q)
            qb = [np.ascontiguousarray(q[:, b]) for b, _ in fam.steps]
            heaps = [_Heaps(q.shape[0], k) for _ in fam.steps]
            work = partial(_fill_heaps, qb=qb, tiles=tiles, heaps=heaps, tile=self.tile)
            slices = row_slices(q.shape[0], threads)
            with _one_thread_each(), ThreadPoolExecutor(len(slices)) as pool:
                list(pool.map(work, slices))
            for (_, names), heap, iq in zip(fam.steps, heaps, inv_q):
                vals, idx = heap.result()
                vals *= iq[:, None]
                out.update({name: (vals, idx) for name in names})
        return {n: out[n] for n in self.names}

    def _chunk_torch(self, fam, q, blocks, inv_s, k):
        import torch

        inv_q = self._norms(fam, q)
        g = None
        for (block, names), bank_t, iq, ib in zip(fam.steps, blocks, inv_q, inv_s):
            qb = q[:, torch.as_tensor(block, device=q.device)]
            g = mm32(qb, bank_t, split=self.half) if g is None else \
                add_product_torch(g, qb, bank_t, split=self.half)
            vals, idx = torch.topk(g * ib[None, :], k, dim=1, largest=True, sorted=True)
            vals = vals * iq[:, None]
            for name in names:
                yield name, (vals, idx)

    def _join(self, parts, k, as_tensors):
        if self.backend == "faiss":
            if not parts:
                return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
            return (np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]))
        import torch

        if not parts:
            v, i = torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.int64)
        else:
            v, i = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return (v, i) if as_tensors else (v.cpu().numpy(), i.cpu().numpy())


def mm32(a, b, split: bool = False):
    """a @ b with a float32 result. float16 inputs (the stored features) multiply on the tensor
    cores with float32 accumulation and a float32 output (``out_dtype``, CUDA; on the CPU the
    same values in float32). float32 inputs that are not float16 values (zscore features) with
    ``split``: each is split into float16 hi + lo parts and a @ b = ah bh + ah bl + al bh (three
    tensor-core products, about float32's accuracy: the dropped al bl term is ~2^-22 relative);
    without ``split``, a float32 product."""
    import torch

    def mm(x, y):
        if x.is_cuda and x.dtype == torch.float16:
            return torch.mm(x, y, out_dtype=torch.float32)
        return x.float() @ y.float()

    if a.dtype == torch.float16 or not split:
        return mm(a, b)
    ah, bh = a.half(), b.half()
    al, bl = (a - ah.float()).half(), (b - bh.float()).half()
    return mm(ah, bh).add_(mm(ah, bl)).add_(mm(al, bh))


def add_product_torch(g, a, b, split: bool = False):
    """g += a @ b in place (g float32): on CUDA with float16 inputs in the product's epilogue
    (``addmm`` with a float32 output, beta = 1: one pass over g), else :func:`mm32` added."""
    import torch

    if g.is_cuda and a.dtype == torch.float16 and b.dtype == torch.float16:
        try:
            return torch.addmm(g, a, b, out_dtype=torch.float32, out=g)
        except (RuntimeError, TypeError, NotImplementedError):  # an older torch: add it
            pass
    return g.add_(mm32(a, b, split))


def topk_by_variant(bank, queries, k: int, variants: dict[str, VariantSpec],
                    device: str = "cpu", backend: str | None = None) -> dict:
    """One-shot :meth:`VariantIndex.search`: {name: (sims, idx)} numpy arrays."""
    return VariantIndex(bank, variants, device, backend).search(queries, k)
