"""``results/tables/variance.parquet``: per model, data set and layer the channel variances of the
support split (``results/variance/{model}/{dataset}.h5``) sorted descending, one row per rank
(columns ``TABLE_COLUMNS["variance"]`` of :mod:`patchlens.report.tables`)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from patchlens.errors import DataError
from patchlens.io import write_parquet
from patchlens.report.tables import empty_table

def _attr_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        return _attr_str(v.item())
    return str(v)


def _read_variance(path: Path) -> tuple[str | None, np.ndarray, np.ndarray]:
    try:
        f = h5py.File(path, "r")
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{path}: cannot open variance file ({e.__class__.__name__}); rerun "
                        "the variance rule") from None
    with f:
        for name in ("var", "layer"):
            if name not in f:
                raise DataError(f"{path}: no variable {name!r}; rerun the variance rule")
        var = np.asarray(f["var"][()], dtype="float64")
        layers = np.asarray(f["layer"][()], dtype="int64")
        ds = _attr_str(f.attrs["dataset"]) if "dataset" in f.attrs else None
    if var.ndim != 2 or var.shape[0] != layers.shape[0]:
        raise DataError(f"{path}: 'var' has shape {var.shape}, expected (layer={len(layers)}, "
                        "channel); rerun the variance rule")
    if not np.isfinite(var).all():
        raise DataError(f"{path}: 'var' holds NaN/inf; rerun the variance rule")
    return ds, layers, var


def variance_table(variance_files: dict) -> pd.DataFrame:
    """Per model, data set and layer the channel variances of the patch tokens sorted descending
    (rank 0 = largest): the spectrum whose few dominant channels Vanyan et al. (2024, arXiv
    2401.00463, Sec. 5) find in MAE-style models.

    ``variance_files`` maps model -> path (or list of paths) of ``variance/{model}/{dataset}.h5``
    (HDF5/netCDF with ``var`` (layer, channel) and coordinate ``layer``); the data set is the
    file's ``dataset`` attribute, else the file name without suffix.
    """
    frames = []
    for model, paths in variance_files.items():
        for p in [paths] if isinstance(paths, (str, Path)) else paths:
            p = Path(p)
            ds, layers, var = _read_variance(p)
            L, C = var.shape
            spec = -np.sort(-var, axis=1)
            frames.append(pd.DataFrame({
                "model": str(model), "dataset": ds or p.stem,
                "layer": np.repeat(layers, C), "rank": np.tile(np.arange(C, dtype="int64"), L),
                "variance": spec.ravel()}))
    if not frames:
        return empty_table("variance")
    return pd.concat(frames, ignore_index=True)


def write_variance(variance_files: dict, out_path) -> pd.DataFrame:
    df = variance_table(variance_files)
    write_parquet(df, out_path)
    return df
