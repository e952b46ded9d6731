"""Per layer x channel mean and variance of patch tokens, streamed over images.

The statistics behind the ``drop{m}`` and ``zscore`` variants (Vanyan et al. 2024, arXiv
2401.00463: MAE/Scale-MAE patch embeddings carry a few very high-variance channels). Computed on
the support split only, so evaluation images never inform the transform. Batches are merged with
Chan et al.'s parallel update (float64), so memory is bounded by one batch of one layer.

One read of every feature file (``docs/protocols.md``): the extractor accumulates these moments per
manifest split while it writes the file (``stats_*`` variables, :class:`FeatureWriter`), and
:func:`split_stats` pools the configured splits from them without reading any token;
:func:`channel_stats` (two passes over the tokens) is the reference and the fallback for files
written before the moments were stored.
"""
from __future__ import annotations

import h5netcdf
import numpy as np

from patchlens.errors import DataError
from patchlens.features.h5safe import checked_file, checksummed
from patchlens.features.moments import merge_moments, pooled
from patchlens.features.store import FeatureStore
from patchlens.io import atomic_path


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


def split_stats(store: FeatureStore, splits: list[str], manifest_images: list[str]):
    """(mean, var, n_tokens) of ``splits`` pooled from the moments stored in the feature file
    (no token read), or None when the file has none. ``manifest_images``: the manifest's images
    of those splits; a file whose images of those splits differ is a DataError (the data set
    changed since extraction)."""
    stored = store.split_moments()
    if stored is None:
        return None
    names, image_split, count, mean, m2 = stored
    if names == ["all"] and "all" not in splits:  # written without split labels (write_features)
        return None
    rows = [names.index(s) for s in dict.fromkeys(splits) if s in names]
    in_file = {store.images[i] for i in np.flatnonzero(np.isin(image_split, rows))}
    if in_file != set(manifest_images):
        raise DataError(f"{store.path}: its images of split(s) {', '.join(splits)} are not the "
                        "manifest's; the data set changed since extraction -- rerun the "
                        "extraction rule")
    if not manifest_images:
        raise DataError(f"{store.path}: no images to compute channel statistics on; "
                        "check variance.split in the config")
    n, mu, q = pooled(count, mean, m2, rows)
    return mu, q / n[:, None], int(n[-1])


def write_stats(path, layers, mean, var, attrs: dict) -> None:
    """netCDF-style HDF5: ``mean``/``var`` (layer, channel) + coordinate ``layer``."""
    with atomic_path(path) as tmp, h5netcdf.File(tmp, "w") as f:
        f.dimensions = {"layer": len(layers), "channel": mean.shape[1]}
        f.create_variable("layer", ("layer",), data=np.asarray(layers, "int32"))
        f.create_variable("mean", ("layer", "channel"), data=mean.astype("f8"), **checksummed())
        f.create_variable("var", ("layer", "channel"), data=var.astype("f8"), **checksummed())
        for k, v in attrs.items():
            f.attrs[k] = v


class VarianceStats:
    """Read a statistics file: ``.mean(layer)``, ``.var(layer)`` as (C,) arrays."""

    def __init__(self, path):
        with checked_file(path, "channel_variance") as f:
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
