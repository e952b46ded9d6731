"""Linear CKA between layers, with the unbiased HSIC estimator and minibatches.

Protocol (Kornblith et al. 2019 "Similarity of Neural Network Representations Revisited";
Nguyen, Raghu & Kornblith 2021 "Do Wide and Deep Networks Learn the Same Things?", Sec. 3.1;
Raghu et al. 2021 "Do Vision Transformers See Like Convolutional Neural Networks?"):

* linear kernels K = X X^T, L = Y Y^T over n samples (rows of X, Y);
* the unbiased HSIC estimator of Song et al. (2012, "Feature Selection via Dependence
  Maximization", Eq. 5), with K~, L~ the kernels with their diagonal set to zero::

      HSIC_1(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
                       - 2/(n-2) 1^T K~ L~ 1 ] / (n (n-3))            (needs n >= 4)

* minibatch CKA (Nguyen et al. 2021, Eq. 3): over k minibatches,
  CKA = mean_i HSIC_1(K_i, L_i) / sqrt(mean_i HSIC_1(K_i, K_i) * mean_i HSIC_1(L_i, L_i)).
  Each minibatch term is unbiased, so the ratio is consistent and does not depend on the batch
  size the way the biased estimator does; no n x n Gram over the whole sample set is ever built.

Which representation is compared (``mode``, ``docs/protocols.md#cka``):

* ``residual`` (default; Raghu et al. 2021, Sec. 3): the residual stream as stored in the feature
  files -- the output of each block before any LayerNorm, plus the final-norm entry
  (``layer = n_blocks``) where the file has one. ``levels``: ``patch`` (patch tokens are the
  samples, ``max_patches_per_image`` per image) and/or ``image`` (mean-pooled patch tokens).
* ``teaching_matters`` (Walmer et al., CVPR 2023, Sec. 3.3; ``cka/cka_main.py`` with
  ``layer_jsons/cka_all`` of github.com/mwalmer-umd/vit_analysis, mode ``all``): LayerNorm-
  normalised tokens, *all tokens of an image* (class token and patches) flattened into one
  sample vector, the linear Gram of each minibatch min-max scaled (``K - min K``, then
  ``/ max``) with its diagonal zeroed, and the unbiased HSIC averaged over minibatches of
  ``batch_size`` images. The reference hooks ``blocks.i.norm1`` and ``blocks.i.norm2``; here the
  LayerNorm outputs are computed from the stored block outputs with the parameters stored at
  extraction (:func:`patchlens.features.extract.layer_norm_params`): layer ``l`` is
  ``blocks[l+1].norm1(x_l)``, i.e. the reference's ``blocks.(l+1).norm1``, and the last block is
  normalised by the final norm (the reference's ``blocks.0.norm1`` on the embeddings and every
  ``norm2`` are not available; the final-norm entry itself is not repeated). Output level
  ``tokens_ln``. Baselines (``pixels``, ``oracle``) have no LayerNorm: their tokens are used as
  stored. The min-max scaling does not change a single-minibatch value (HSIC_1 ignores a constant
  added to the off-diagonal kernel, and CKA a common scale), but it reweights minibatches.

HSIC_1 with a linear kernel is invariant to translating the features, so every block of samples is
centred (float64) before its Gram is formed, which only improves the numerics.

Layer x layer matrices (:func:`minibatch_cka_matrix`) build each layer's minibatch Grams once per
*minibatch set* (a group of samples that is read, shuffled and split into minibatches together)
and pair all layers at once: sum_ij K~_ij L~_ij for every layer pair is one matrix product of the
flattened Grams, and 1^T K~ L~ 1 = (K~ 1) . (L~ 1). No torch import. The samples of feature files
and the table of a model pair: :mod:`patchlens.analysis.cka_stores`.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from patchlens.device import matmul
from patchlens.errors import ConfigError, DataError
from patchlens.params import merge_params

DEFAULT_PARAMS = {"batch_size": 256, "levels": ["patch", "image"], "max_patches_per_image": 16,
            "set_size": 4096, "read_chunk": 64, "seed": 0, "mode": "residual"}
LEVELS = ("patch", "image")
MODES = ("residual", "teaching_matters")
TM_LEVEL = "tokens_ln"  # the level name of mode teaching_matters
WHERE = "analyses.cka.params"  # where the parameters live in the config (error messages)


# ----------------------------------------------------------------------------- estimators

def _centre(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"CKA expects (samples, features) arrays, got shape {x.shape}")
    return x - x.mean(0)


def _check_n(n: int) -> None:
    if n < 4:
        raise DataError(f"CKA: the unbiased HSIC estimator needs at least 4 samples, got {n}")


def hsic_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased linear-kernel HSIC_1 (Song et al. 2012) of (n, d1) and (n, d2) features.

    Evaluated in feature space in O(n d1 d2): tr(K~L~) = ||X^T Y||_F^2 - sum_i |x_i|^2 |y_i|^2 and
    K~ 1 = X (X^T 1) - diag(K); no n x n matrix is formed.
    """
    x, y = _centre(x), _centre(y)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"CKA: {n} samples in x but {y.shape[0]} in y")
    _check_n(n)
    kd, ld = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    tr = np.sum(matmul(x.T, y) ** 2) - kd @ ld
    kr = x @ x.sum(0) - kd
    lr = y @ y.sum(0) - ld
    return float((tr + kr.sum() * lr.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (kr @ lr))
                 / (n * (n - 3)))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Full-batch linear CKA with the unbiased HSIC estimator (Nguyen et al. 2021):
    HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)). NaN when a representation is constant."""
    kl, kk, ll = hsic_unbiased(x, y), hsic_unbiased(x, x), hsic_unbiased(y, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(kl / np.sqrt(kk * ll))


def _gram(x: np.ndarray) -> np.ndarray:
    """Zero-diagonal linear Gram K~ (float64) of one minibatch of features.

    The samples are centred in float64 (HSIC_1 is translation invariant), the product runs in
    float32 (3x faster than float64 here; the stored features are float16 anyway) and the Gram is
    returned in float64 so that the HSIC sums and their cancellations run in double precision.
    """
    x = _centre(x)
    _check_n(x.shape[0])
    x = x.astype(np.float32)
    k = (x @ x.T).astype(np.float64)
    np.fill_diagonal(k, 0.0)
    return k


def gram_minmax(x) -> np.ndarray:
    """Teaching Matters' minibatch kernel (``cka_main.py``): K = X X^T of the *uncentred*
    features, ``K - min(K)``, then ``/ max(K)`` (over the whole matrix, diagonal included), then
    the diagonal set to zero; float64."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"CKA expects (samples, features) arrays, got shape {x.shape}")
    _check_n(x.shape[0])
    k = (x @ x.T).astype(np.float64)
    k -= k.min()
    top = k.max()
    if top > 0:
        k /= top
    np.fill_diagonal(k, 0.0)
    return k


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, as torch): (x - mu) / sqrt(var + eps) * w
    + b, float32."""
    x = np.asarray(x, np.float32)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


class _Grams:
    """The zero-diagonal Grams of several layers on one minibatch, stacked for pairing:
    F (layers, n*n) flattened K~, R (layers, n) = K~ 1, S (layers,) = 1^T K~ 1."""

    def __init__(self, grams: list[np.ndarray]):
        self.n = grams[0].shape[0]
        self.F = np.empty((len(grams), self.n * self.n))
        for i, k in enumerate(grams):
            self.F[i] = k.ravel()
        self.R = self.F.reshape(len(grams), self.n, self.n).sum(2)
        self.S = self.R.sum(1)

    def hsic(self, other: "_Grams") -> np.ndarray:
        """(layers_self, layers_other) HSIC_1 of every pair (Song et al. 2012, Eq. 5)."""
        n = self.n
        tr = self.F @ other.F.T
        return (tr + np.outer(self.S, other.S) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (self.R @ other.R.T)) / (n * (n - 3))

    def hsic_self(self) -> np.ndarray:
        """(layers,) HSIC_1(K, K) of every layer."""
        n = self.n
        tr = np.einsum("ij,ij->i", self.F, self.F)
        return (tr + self.S ** 2 / ((n - 1) * (n - 2))
                - 2 / (n - 2) * np.einsum("ij,ij->i", self.R, self.R)) / (n * (n - 3))


def minibatch_cka(x_batches: Iterable[np.ndarray], y_batches: Iterable[np.ndarray]) -> float:
    """Minibatch linear CKA (Nguyen et al. 2021, Eq. 3) over paired minibatches (x_i, y_i):
    mean HSIC_1(K_i, L_i) / sqrt(mean HSIC_1(K_i, K_i) * mean HSIC_1(L_i, L_i))."""
    kl = kk = ll = 0.0
    count = 0
    for x, y in zip(x_batches, y_batches, strict=True):
        if len(x) != len(y):
            raise ValueError(f"CKA minibatch {count}: {len(x)} samples in x but {len(y)} in y")
        gx, gy = _Grams([_gram(x)]), _Grams([_gram(y)])
        kl += gx.hsic(gy)[0, 0]
        kk += gx.hsic_self()[0]
        ll += gy.hsic_self()[0]
        count += 1
    if count == 0:
        raise DataError("CKA: no minibatches")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(kl / np.sqrt(kk * ll))


def batch_splits(m: int, batch_size: int) -> list[np.ndarray]:
    """Split m (shuffled) positions into ceil(m / batch_size) near-equal contiguous batches."""
    k = max(1, math.ceil(m / batch_size))
    return np.array_split(np.arange(m), k)


LayerArrays = Iterable[np.ndarray]
_PAIR_BLOCK = 4  # B layers whose Grams are paired with A's in one matrix product


def minibatch_cka_matrix(sets: Iterable[tuple[LayerArrays, LayerArrays | None]],
                         batch_size: int = 256, seed: int = 0, gram=None) -> np.ndarray:
    """Layer x layer minibatch CKA (LA, LB) over minibatch sets.

    ``sets`` yields ``(layers_a, layers_b)``: iterables over the layers of each model, each giving
    the (m, C_l) samples of that set, rows aligned between the two models; ``layers_b = None``
    compares model A with itself. Per set the rows are shuffled (``seed``, set index) and split
    into ceil(m / batch_size) near-equal minibatches; A's layers are consumed one at a time into
    their minibatch Grams (memory: (LA + 4) x m x batch_size float64), then B's layers stream past
    them, 4 at a time, and are paired with every A layer by one matrix product per minibatch.
    Every minibatch weighs equally. ``gram`` (default: the centred zero-diagonal linear Gram)
    maps a minibatch (n, C) to its zero-diagonal kernel matrix.
    """
    gram = _gram if gram is None else gram
    kl = kk = ll = None
    count = 0
    for si, (layers_a, layers_b) in enumerate(sets):
        rng = np.random.default_rng([int(seed), si])
        splits = None
        grams_a: list[list[np.ndarray]] = []   # [batch][layer]
        for xa in layers_a:
            if splits is None:
                perm = rng.permutation(len(xa))
                splits = [perm[s] for s in batch_splits(len(xa), batch_size)]
                grams_a = [[] for _ in splits]
            elif len(xa) != sum(len(s) for s in splits):
                raise DataError(f"CKA set {si}: layers have different sample counts")
            for j, idx in enumerate(splits):
                grams_a[j].append(gram(xa[idx]))
        if splits is None:
            continue
        batches_a = []
        for j in range(len(splits)):   # stack and free the per-layer Grams batch by batch
            batches_a.append(_Grams(grams_a[j]))
            grams_a[j] = None
        self_a = sum(g.hsic_self() for g in batches_a)
        if layers_b is None:
            pair = sum(g.hsic(g) for g in batches_a)
            self_b = self_a
        else:
            cols, self_b = [], []
            pending: list[list[np.ndarray]] = [[] for _ in splits]   # [batch][B layer]

            def flush():
                if not pending[0]:
                    return
                col = sb = 0.0
                for j in range(len(splits)):
                    gb = _Grams(pending[j])
                    pending[j] = []
                    col = col + batches_a[j].hsic(gb)
                    sb = sb + gb.hsic_self()
                cols.append(col)
                self_b.append(sb)

            n_a = sum(len(s) for s in splits)
            for xb in layers_b:
                if len(xb) != n_a:
                    raise DataError(f"CKA set {si}: model B has {len(xb)} samples, model A {n_a}")
                for j, idx in enumerate(splits):
                    pending[j].append(gram(xb[idx]))
                if len(pending[0]) == _PAIR_BLOCK:
                    flush()
            flush()
            pair, self_b = np.concatenate(cols, axis=1), np.concatenate(self_b)
        kl = pair if kl is None else kl + pair
        kk = self_a if kk is None else kk + self_a
        ll = self_b if ll is None else ll + self_b
        count += len(splits)
    if count == 0:
        raise DataError("CKA: no samples")
    with np.errstate(invalid="ignore", divide="ignore"):
        return kl / np.sqrt(np.outer(kk, ll))


# ----------------------------------------------------------------------------- feature stores

def check_params(params: dict | None) -> dict:
    """Validated CKA parameters (keys of :data:`DEFAULT_PARAMS`); ConfigError naming the key."""
    p = merge_params(params, DEFAULT_PARAMS, WHERE)
    levels = [p["levels"]] if isinstance(p["levels"], str) else list(p["levels"])
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or not levels:
        raise ConfigError(f"{WHERE}.levels = {p['levels']!r}: expected a subset of "
                          f"{list(LEVELS)}")
    for key in ("batch_size", "max_patches_per_image", "set_size", "read_chunk"):
        if not isinstance(p[key], (int, np.integer)) or isinstance(p[key], bool) or p[key] < 1:
            raise ConfigError(f"{WHERE}.{key} = {p[key]!r}: expected a positive integer")
    if p["mode"] not in MODES:
        raise ConfigError(f"{WHERE}.mode = {p['mode']!r}: expected one of {list(MODES)}")
    if p["batch_size"] < 4:
        raise ConfigError(f"{WHERE}.batch_size = {p['batch_size']}: the unbiased estimator "
                          "needs >= 4")
    if not isinstance(p["seed"], (int, np.integer)) or isinstance(p["seed"], bool):
        raise ConfigError(f"{WHERE}.seed = {p['seed']!r}: expected an integer")
    return {**p, "levels": levels}


cka_params = check_params  # the former name
