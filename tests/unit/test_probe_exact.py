"""The linear probe's objective (patchlens.evaluation.probes) picks the true class's
log-probability and subtracts 1 in place instead of multiplying by a one-hot matrix: the fit must
be bit-for-bit the one-hot formulation's (the scores of the study do not change); and it is the
same on any number of threads."""
import numpy as np
from scipy.optimize import minimize

from patchlens.evaluation.knn import l2_normalize
from patchlens.evaluation.probes import LinearProbe


def onehot_fit(x, y, k, wd, iters):
    """The textbook formulation (one-hot targets), as the probe computed it before."""
    x = l2_normalize(x)
    x = np.ascontiguousarray((x - x.mean(0)) / np.maximum(x.std(0), 1e-6), dtype=np.float32)
    n, c = x.shape
    onehot = np.zeros((n, k), np.float32)
    onehot[np.arange(n), y] = 1.0

    def objective(theta):
        w = theta[:c * k].reshape(c, k).astype(np.float32)
        z = (x @ w).astype(np.float64) + theta[c * k:]
        z -= z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1, keepdims=True))
        p = np.exp(z - lse)
        loss = -np.mean(np.sum(onehot * (z - lse), 1)) + 0.5 * wd * np.sum(w * w)
        g = ((p - onehot) / n).astype(np.float32)
        gw = (x.T @ g).astype(np.float64) + wd * w
        return loss, np.concatenate([gw.ravel(), g.sum(0, dtype=np.float64)])

    return minimize(objective, np.zeros(c * k + k), jac=True, method="L-BFGS-B",
                    options={"maxiter": iters, "gtol": 1e-8, "ftol": 1e-12}).x


def test_fit_equals_the_one_hot_formulation_bit_for_bit():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 900)
    x = (rng.normal(size=(6, 24))[y] + rng.normal(size=(900, 24))).astype(np.float32)
    probe = LinearProbe.fit(x, y, 6, 1e-3, 40)
    theta = onehot_fit(x, y, 6, 1e-3, 40)
    np.testing.assert_array_equal(probe.weight, theta[:24 * 6].reshape(24, 6).astype(np.float32))
    np.testing.assert_array_equal(probe.bias, theta[24 * 6:].astype(np.float32))


def test_fit_does_not_depend_on_the_thread_count(monkeypatch):
    """The objective's products run over fixed row blocks, each on one BLAS thread, and the
    gradient's partial sums are added in block order: the fit is bit-for-bit the same on 1 or
    3 threads (BLAS's own threads split x.T @ g's sum by thread count)."""
    from patchlens.evaluation import probes

    monkeypatch.setattr(probes, "BLOCK", 128)  # 900 rows: 8 blocks, one of them partial
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 900)
    x = (rng.normal(size=(5, 32))[y] + rng.normal(size=(900, 32))).astype(np.float32)
    fits = []
    for threads in ("1", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        fits.append(LinearProbe.fit(x, y, 5, 1e-3, 30))
    np.testing.assert_array_equal(fits[0].weight, fits[1].weight)
    np.testing.assert_array_equal(fits[0].bias, fits[1].bias)
    # and the blocked gradient is x.T @ g: the fit reaches the one-hot formulation's optimum
    theta = onehot_fit(x, y, 5, 1e-3, 30)
    np.testing.assert_allclose(fits[0].weight, theta[:32 * 5].reshape(32, 5), atol=1e-4)
