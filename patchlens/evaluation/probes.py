"""The linear probe of the few-shot segmentation protocol (Vanyan et al. 2024, arXiv 2401.00463,
Sec. 4; ``docs/protocols.md``): multinomial logistic regression with L2 weight decay, full-batch
L-BFGS for a fixed number of iterations from zero (deterministic).

Speed: the optimiser's own updates are small vector operations in scipy's BLAS; on more than one
thread that pool competes with numpy's for the cores between the objective's two matmuls and the
fit takes about twice as long (benchmarks/README.md), so it runs on one thread
(:func:`optimizer_blas_on_one_thread`). The objective's two products run over fixed row blocks on
the job's threads (:class:`_Products`), so that the fit does not depend on the thread count.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from patchlens.device import device, job_threads, matmul
from patchlens.evaluation.knn import l2_normalize
from patchlens.params import expect_int, expect_number

BLOCK = 8192  # rows per block of the fit's products (fixed, so that the fit is too)


@contextlib.contextmanager
def optimizer_blas_on_one_thread():
    """scipy's own BLAS library on one thread for the duration (pip wheels ship one beside
    numpy's); where scipy and numpy share one library (conda), that library."""
    from threadpoolctl import ThreadpoolController

    blas = [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas"]
    own = [lib for lib in blas if "scipy.libs" in lib.filepath.replace("\\", "/")]
    libs = own or blas
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


def check_fit_params(p: dict, where: str, prefix: str = "") -> None:
    """ConfigError naming the key unless ``p[prefix + "weight_decay"]`` is a number >= 0 and
    ``p[prefix + "iters"]`` an integer >= 1: the settings of :meth:`LinearProbe.fit` as a task's
    parameters (``where`` is the config location, e.g. ``tasks.depth.params``)."""
    expect_number(p[f"{prefix}weight_decay"], f"{where}.{prefix}weight_decay", 0)
    expect_int(p[f"{prefix}iters"], f"{where}.{prefix}iters", 1)


class _Products:
    """The objective's two products, x @ w and x.T @ g, over fixed blocks of ``BLOCK`` rows,
    each on one BLAS thread, the blocks spread over the job's threads and the gradient's
    partial sums added in block order: the fit is the same whatever the thread count (BLAS's
    own threads split x.T @ g's sum by thread, so the fit moved with the cores: up to 3e-5 in
    a few-shot mIoU between 1 and 2 threads). Under a GPU scope, both on the device
    (:func:`patchlens.device.matmul`)."""

    def __init__(self, x: np.ndarray, k: int):
        self.x = x
        self.blocks = [slice(i, min(i + BLOCK, x.shape[0])) for i in range(0, x.shape[0], BLOCK)]
        self.on_device = device() != "cpu"
        self._parts = np.empty((len(self.blocks), x.shape[1], k), np.float32)
        self._z = np.empty((x.shape[0], k), np.float32)

    def __enter__(self):
        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(1, user_api="blas")
        threads = min(job_threads(), len(self.blocks))
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown()
        self._limits.restore_original_limits()

    def _each(self, fn) -> None:
        list(self._pool.map(fn, self.blocks) if self._pool else map(fn, self.blocks))

    def logits(self, w: np.ndarray) -> np.ndarray:
        if self.on_device:
            return matmul(self.x, w)
        self._each(lambda b: np.matmul(self.x[b], w, out=self._z[b]))
        return self._z

    def gradient(self, g: np.ndarray) -> np.ndarray:
        """x.T @ g in float64."""
        if self.on_device:
            return matmul(self.x.T, g).astype(np.float64)
        at = {b.start: i for i, b in enumerate(self.blocks)}
        self._each(lambda b: np.matmul(self.x[b].T, g[b], out=self._parts[at[b.start]]))
        return self._parts.sum(0, dtype=np.float64)


@dataclass
class LinearProbe:
    """Multinomial logistic regression on L2-normalised (unless ``l2`` is false), standardised
    features."""
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray  # (C, K)
    bias: np.ndarray    # (K,)
    n_evals: int = 0    # objective evaluations of the fit (about one per L-BFGS iteration)
    l2: bool = True     # features L2-normalised first (the few-shot protocol)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float,
            iters: int, l2: bool = True) -> "LinearProbe":
        """Minimise mean cross-entropy + (weight_decay / 2) |W|^2 (bias not penalised) with
        full-batch L-BFGS (scipy), ``iters`` iterations from zero: deterministic given the data.
        Features are L2-normalised (the geometry the k-NN head uses), then standardised with the
        support mean and standard deviation (conditioning only: the model class is unchanged).
        ``l2=False`` skips the L2 normalisation (the depth probe: depth is not a direction)."""
        x = l2_normalize(x) if l2 else np.asarray(x, np.float32)
        mean = x.mean(0)
        scale = np.maximum(x.std(0), 1e-6)
        x = np.ascontiguousarray((x - mean) / scale, dtype=np.float32)
        n, c = x.shape
        rows = np.arange(n)
        products = _Products(x, n_classes)

        def objective(theta):
            # the mean cross-entropy and its gradient; the true class's log-probability is
            # picked (not summed against a one-hot matrix) and 1 subtracted from its
            # probability in place: the same floating-point values, fewer passes over (n, K)
            w = theta[:c * n_classes].reshape(c, n_classes).astype(np.float32)
            z = products.logits(w).astype(np.float64) + theta[c * n_classes:]
            z -= z.max(1, keepdims=True)
            z -= np.log(np.exp(z).sum(1, keepdims=True))   # log-probabilities
            loss = -np.mean(z[rows, y]) + 0.5 * weight_decay * np.sum(w * w)
            p = np.exp(z, out=z)
            p[rows, y] -= 1.0
            p /= n
            g = p.astype(np.float32)
            gw = products.gradient(g) + weight_decay * w
            return loss, np.concatenate([gw.ravel(), g.sum(0, dtype=np.float64)])

        with optimizer_blas_on_one_thread(), products:
            res = minimize(objective, np.zeros(c * n_classes + n_classes), jac=True,
                           method="L-BFGS-B",
                           options={"maxiter": int(iters), "gtol": 1e-8, "ftol": 1e-12})
        theta = res.x
        return cls(mean, scale, theta[:c * n_classes].reshape(c, n_classes).astype(np.float32),
                   theta[c * n_classes:].astype(np.float32), int(res.nfev), bool(l2))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores (n, K) of features (n, C)."""
        x = l2_normalize(x) if self.l2 else np.asarray(x, np.float32)
        return ((x - self.mean) / self.scale) @ self.weight + self.bias
