"""The linear probe's objective (patchlens.evaluation.probes) picks the true class's
log-probability and subtracts 1 in place instead of multiplying by a one-hot matrix: the fit must
be bit-for-bit the one-hot formulation's (the scores of the study do not change)."""
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
