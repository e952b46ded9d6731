"""Per layer x channel mean and variance of patch tokens, streamed over images.

The statistics behind the ``drop{m}`` and ``zscore`` variants (Vanyan et al. 2024, arXiv
2401.00463: MAE/Scale-MAE patch embeddings carry a few very high-variance channels). Computed on
the support split only, so evaluation images never inform the transform. Batches are merged with
Chan et al.'s parallel update (float64), so memory is bounded by one batch of one layer.
"""
from __future__ import annotations

import h5netcdf
import numpy as np

from patchlens.errors import DataError
from patchlens.features.store import FeatureStore
from patchlens.io import atomic_path


def merge_moments(n_a, mean_a, m2_a, x: np.ndarray):
    """Fold samples ``x`` (n, C) into running (count, mean, M2) (Chan et al. 1979)."""
    n_b = x.shape[0]
    if n_b == 0:
        return n_a, mean_a, m2_a
    x = x.astype(np.float64)
    mean_b = x.mean(0)
    m2_b = ((x - mean_b) ** 2).sum(0)
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta ** 2 * (n_a * n_b / n)
    return n, mean, m2


def channel_stats(store: FeatureStore, images: list[str], batch: int = 64):
    """(mean, var) arrays of shape (layer, channel) over all patch tokens of ``images``
    (population variance), and the token count."""
    if not images:
        raise DataError(f"{store.path}: no images to compute channel statistics on; "
                        "check variance.split in the config")
    L, C = len(store.layers), store.channels
    means, variances = np.zeros((L, C)), np.zeros((L, C))
    for li, layer in enumerate(store.layers):
        n, mean, m2 = 0, np.zeros(C), np.zeros(C)
        for i in range(0, len(images), batch):
            x = store.tokens(layer, images[i:i + batch]).reshape(-1, C)
            n, mean, m2 = merge_moments(n, mean, m2, x)
        means[li], variances[li] = mean, m2 / n
    return means, variances, n


def write_stats(path, layers, mean, var, attrs: dict) -> None:
    """netCDF-style HDF5: ``mean``/``var`` (layer, channel) + coordinate ``layer``."""
    with atomic_path(path) as tmp, h5netcdf.File(tmp, "w") as f:
        f.dimensions = {"layer": len(layers), "channel": mean.shape[1]}
        f.create_variable("layer", ("layer",), data=np.asarray(layers, "int32"))
        f.create_variable("mean", ("layer", "channel"), data=mean.astype("f8"))
        f.create_variable("var", ("layer", "channel"), data=var.astype("f8"))
        for k, v in attrs.items():
            f.attrs[k] = v


class VarianceStats:
    """Read a statistics file: ``.mean(layer)``, ``.var(layer)`` as (C,) arrays."""

    def __init__(self, path):
        import h5py

        with h5py.File(path, "r") as f:
            self.layers = [int(x) for x in f["layer"][:]]
            self._mean, self._var = f["mean"][:], f["var"][:]

    def _row(self, a, layer):
        try:
            return a[self.layers.index(int(layer))]
        except ValueError:
            raise DataError(f"variance statistics have no layer {layer}") from None

    def mean(self, layer):
        return self._row(self._mean, layer)

    def var(self, layer):
        return self._row(self._var, layer)
