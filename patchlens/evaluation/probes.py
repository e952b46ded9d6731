"""The linear probe of the few-shot segmentation protocol (Vanyan et al. 2024, arXiv 2401.00463,
Sec. 4; ``docs/protocols.md``): multinomial logistic regression with L2 weight decay, full-batch
L-BFGS for a fixed number of iterations from zero (deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from patchlens.device import matmul
from patchlens.evaluation.knn import l2_normalize


@dataclass
class LinearProbe:
    """Multinomial logistic regression on L2-normalised, standardised features."""
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray  # (C, K)
    bias: np.ndarray    # (K,)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float,
            iters: int) -> "LinearProbe":
        """Minimise mean cross-entropy + (weight_decay / 2) |W|^2 (bias not penalised) with
        full-batch L-BFGS (scipy), ``iters`` iterations from zero: deterministic given the data.
        Features are L2-normalised (the geometry the k-NN head uses), then standardised with the
        support mean and standard deviation (conditioning only: the model class is unchanged)."""
        x = l2_normalize(x)
        mean = x.mean(0)
        scale = np.maximum(x.std(0), 1e-6)
        x = np.ascontiguousarray((x - mean) / scale, dtype=np.float32)
        n, c = x.shape
        onehot = np.zeros((n, n_classes), np.float32)
        onehot[np.arange(n), y] = 1.0

        def objective(theta):
            w = theta[:c * n_classes].reshape(c, n_classes).astype(np.float32)
            z = matmul(x, w).astype(np.float64) + theta[c * n_classes:]
            z -= z.max(1, keepdims=True)
            lse = np.log(np.exp(z).sum(1, keepdims=True))
            p = np.exp(z - lse)
            loss = -np.mean(np.sum(onehot * (z - lse), 1)) + 0.5 * weight_decay * np.sum(w * w)
            g = ((p - onehot) / n).astype(np.float32)
            gw = matmul(x.T, g).astype(np.float64) + weight_decay * w
            return loss, np.concatenate([gw.ravel(), g.sum(0, dtype=np.float64)])

        res = minimize(objective, np.zeros(c * n_classes + n_classes), jac=True, method="L-BFGS-B",
                       options={"maxiter": int(iters), "gtol": 1e-8, "ftol": 1e-12})
        theta = res.x
        return cls(mean, scale, theta[:c * n_classes].reshape(c, n_classes).astype(np.float32),
                   theta[c * n_classes:].astype(np.float32))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores (n, K) of features (n, C)."""
        return ((l2_normalize(x) - self.mean) / self.scale) @ self.weight + self.bias
