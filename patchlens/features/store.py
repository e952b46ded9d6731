"""Per-layer patch features on disk: HDF5 laid out as netCDF4, so that
``xarray.open_dataset(path, engine="h5netcdf")`` shows named dimensions.

Variables (dims):
    tokens (image, layer, patch, channel) float16, one chunk per (image, layer)
    cls    (image, layer, channel)        float16, only for models with a class token
    image  (image,)  string ids matching the data set manifest
    layer  (layer,)  block index, 0-based; ``n_blocks`` = the final-norm output (attr norm_layer)
    ln_weight, ln_bias (layer, channel) float32, timm models only: the LayerNorm reading each layer
Attributes: model, dataset, source, weights_sha256, patch_size, input_size (H, W), grid (h, w),
n_blocks (blocks in the network), mean, std (input normalisation), patchlens_version, ...

Writers stream batches into a temporary file and rename it at the end (see :mod:`patchlens.io`).
A file is renamed into place only when no write failed and, after closing, it reads back with
every image present and the CRC-32 of every image's bytes equal to what was written (a write
error that HDF5 reports only as "Exception ignored" while flushing its chunk cache leaves zeroed
chunks; this check finds them). Readers return float32 numpy arrays and never import torch.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import h5netcdf
import h5py
import numpy as np

from patchlens import __version__
from patchlens.errors import DataError
from patchlens.io import atomic_path


class FeatureWriteError(DataError):
    """A feature file could not be written or does not read back as written (disk full, I/O
    error); the temporary file is removed and nothing is renamed into place."""


def _crc(block: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(block).view(np.uint8).reshape(-1))


class FeatureWriter:
    """Stream (batch, layer, patch, channel) arrays into a feature file.

    Use as a context manager; the file appears under ``path`` only when the block exits cleanly
    and every image was written.
    """

    def __init__(self, path, images: list[str], layers: list[int], grid: tuple[int, int],
                 channels: int, has_cls: bool, attrs: dict, extra: dict | None = None):
        self.path = Path(path)
        self.extra = dict(extra or {})  # small (layer, channel) float32 variables, e.g. ln_weight
        self.images, self.layers = list(images), [int(x) for x in layers]
        self.grid, self.channels, self.has_cls = tuple(grid), int(channels), has_cls
        self.attrs = dict(attrs)
        self._n = 0
        self._failed: BaseException | None = None  # first write error, even if caught upstream
        self._crcs: dict[str, list[int]] = {"tokens": [], "cls": []}

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        self._tmp = tmp = self._atomic.__enter__()
        # no chunk cache: each (image, layer) chunk is written whole, straight to the file, so a
        # write error is raised by the write call instead of a later, ignored cache flush
        f = h5netcdf.File(tmp, "w", rdcc_nbytes=0)
        n, L, P, C = len(self.images), len(self.layers), self.grid[0] * self.grid[1], self.channels
        f.dimensions = {"image": n, "layer": L, "patch": P, "channel": C}
        f.create_variable("image", ("image",), data=np.array(self.images, dtype=object),
                          dtype=h5py.string_dtype())
        f.create_variable("layer", ("layer",), data=np.array(self.layers, dtype="int32"))
        f.create_variable("tokens", ("image", "layer", "patch", "channel"), dtype="f2",
                          chunks=(1, 1, P, C))
        if self.has_cls:
            f.create_variable("cls", ("image", "layer", "channel"), dtype="f2", chunks=(1, L, C))
        for name, arr in self.extra.items():
            f.create_variable(name, ("layer", "channel"), data=np.asarray(arr, np.float32))
        attrs = {"patchlens_version": __version__, **self.attrs,
                 "grid": np.array(self.grid, dtype="int32")}
        for k, v in attrs.items():
            f.attrs[k] = v if not isinstance(v, (list, tuple)) else np.asarray(v)
        self._f = f
        return self

    def write(self, tokens: np.ndarray, cls: np.ndarray | None = None) -> None:
        """Append a batch: tokens (b, L, P, C), cls (b, L, C)."""
        b = tokens.shape[0]
        expect = (len(self.layers), self.grid[0] * self.grid[1], self.channels)
        if tuple(tokens.shape[1:]) != expect:
            raise ValueError(f"token batch shape {tokens.shape[1:]} != (layer, patch, channel) {expect}")
        if self._failed is not None:
            raise self._error(self._failed)
        if self._n + b > len(self.images):
            raise ValueError(f"{self.path}: batch of {b} past the {len(self.images)} images")
        sl = slice(self._n, self._n + b)
        tokens = np.asarray(tokens, np.float16)
        arrays = {"tokens": tokens}
        if self.has_cls:
            arrays["cls"] = np.asarray(cls, np.float16)
        try:
            for name, arr in arrays.items():
                # straight to the h5py datasets: h5netcdf's own indexing costs 3x the write itself
                self._f.variables[name]._h5ds[sl] = arr
        except Exception as exc:
            self._failed = exc
            raise self._error(exc) from exc
        for name, arr in arrays.items():
            self._crcs[name] += [_crc(row) for row in arr]
        self._n += b

    def _error(self, exc: BaseException) -> FeatureWriteError:
        errno = getattr(exc, "errno", None)
        reason = (f"[Errno {errno}] {os.strerror(errno)}" if errno else
                  f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
        return FeatureWriteError(
            f"{self.path}: writing the feature file failed ({reason}); nothing was kept -- "
            "free disk space or fix the file system, then rerun the extraction rule")

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self._failed is None:
                self._f.flush()  # raises what a close would only print
            self._f.close()
        except Exception as err:
            self._failed = self._failed or err
        if exc_type is None and self._failed is None and self._n != len(self.images):
            err = RuntimeError(f"{self.path}: wrote {self._n} of {len(self.images)} images")
            self._atomic.__exit__(type(err), err, None)  # a caller bug, not a disk error
            raise err
        if exc_type is None and self._failed is None:
            bad = self._verify()
            if bad:
                self._failed = RuntimeError(bad)
        if exc_type is None and self._failed is not None:
            err = self._error(self._failed)
            self._atomic.__exit__(type(err), err, None)  # removes the temporary file
            raise err from self._failed
        return self._atomic.__exit__(exc_type, exc, tb)

    def _verify(self) -> str | None:
        """Reopen the closed temporary file: every image and every chunk as written, else why
        not (one phrase)."""
        try:
            with h5py.File(self._tmp, "r") as f:
                for name, crcs in self._crcs.items():
                    if not crcs:
                        continue
                    ds = f[name]
                    if ds.shape[0] != len(self.images):
                        return f"{name} holds {ds.shape[0]} of {len(self.images)} images"
                    step = max(1, (64 << 20) // max(1, int(np.prod(ds.shape[1:])) * 2))
                    for lo in range(0, ds.shape[0], step):
                        block = ds[lo:lo + step]
                        for i, row in enumerate(block):
                            if _crc(row) != crcs[lo + i]:
                                return (f"{name} of image {self.images[lo + i]!r} reads back "
                                        "different from what was written")
        except OSError as exc:
            return f"the closed file does not reopen ({exc})"
        return None


def write_features(path, tokens: np.ndarray, images: list[str], grid, attrs: dict,
                   cls: np.ndarray | None = None, layers: list[int] | None = None) -> None:
    """Write a whole (image, layer, patch, channel) array at once (tests, baselines)."""
    layers = list(range(tokens.shape[1])) if layers is None else layers
    with FeatureWriter(path, images, layers, grid, tokens.shape[-1], cls is not None, attrs) as w:
        w.write(tokens, cls)


def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):  # netCDF stores scalars as 1-element arrays
        return v.item() if v.size == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class FeatureStore:
    """Read one feature file. ``tokens(layer)`` returns float32 (n, h, w, C)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as exc:
            raise DataError(f"{self.path}: not a readable feature file ({exc}); "
                            "delete it and rerun the extraction rule") from exc
        if "tokens" not in self._f or "image" not in self._f:
            raise DataError(f"{self.path}: no 'tokens' variable; delete it and rerun the "
                            "extraction rule")
        if self._f["tokens"].shape[0] != self._f["image"].shape[0]:
            raise DataError(f"{self.path}: {self._f['tokens'].shape[0]} token rows for "
                            f"{self._f['image'].shape[0]} images; delete it and rerun the "
                            "extraction rule")
        self.images = [s.decode() if isinstance(s, bytes) else str(s) for s in self._f["image"][:]]
        self.layers = [int(x) for x in self._f["layer"][:]]
        self.attrs = {k: _attr(v) for k, v in self._f.attrs.items()
                      if not k.startswith("_") and k not in ("DIMENSION_LIST",)}
        self.grid = tuple(int(x) for x in self._f.attrs["grid"])
        self.channels = int(self._f["tokens"].shape[-1])
        self.has_cls = "cls" in self._f
        self._index = {im: i for i, im in enumerate(self.images)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def norm_layer(self) -> int | None:
        """The layer entry holding the model's final-norm output, or None (no such entry)."""
        v = int(self.attrs.get("norm_layer", -1))
        return v if v >= 0 and v in self.layers else None

    def variable(self, name: str) -> np.ndarray | None:
        """A small per-layer variable (layer, channel) as float32, or None if the file lacks it."""
        return self._f[name][:].astype(np.float32) if name in self._f else None

    def _rows(self, images):
        if images is None:
            return slice(None), None
        try:
            idx = np.array([self._index[i] for i in images], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{self.path}: image {exc.args[0]!r} not in the feature file; "
                            "the data set changed since extraction, rerun it") from None
        order = np.argsort(idx)
        return idx[order], np.argsort(order)

    def _layer_pos(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise DataError(f"{self.path}: layer {layer} not extracted (have {self.layers})") from None

    def _read(self, name: str, layer: int, images) -> np.ndarray:
        li = self._layer_pos(layer)
        rows, back = self._rows(images)
        ds = self._f[name]
        if back is None:
            out = ds[:, li]
        elif len(rows) == 0:
            out = np.zeros((0,) + ds.shape[2:], ds.dtype)
        else:
            # h5py needs increasing unique indices; read the covering range if dense enough
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if len(rows) * 2 >= hi - lo:
                out = ds[lo:hi, li][rows - lo]
            else:
                out = np.stack([ds[int(r), li] for r in rows])
            out = out[back]
        return out.astype(np.float32)

    def tokens(self, layer: int, images: list[str] | None = None) -> np.ndarray:
        """Patch tokens of one layer as float32 (n, h, w, C), images in the order asked."""
        x = self._read("tokens", layer, images)
        return x.reshape(x.shape[0], *self.grid, self.channels)

    def cls(self, layer: int, images: list[str] | None = None) -> np.ndarray:
        """Class token of one layer as float32 (n, C)."""
        if not self.has_cls:
            raise DataError(f"{self.path}: model {self.attrs.get('model')!r} has no class token")
        return self._read("cls", layer, images)


def expect_identity(store, model: str, dataset: str) -> None:
    """DataError unless the feature file ``store`` records that it holds the features of
    ``model`` on ``dataset`` (its ``model`` / ``dataset`` attributes, written by the extraction):
    a consumer never scores one model's features under another's name (two config keys that
    named one file, a file copied by hand)."""
    got = (str(store.attrs.get("model", "")), str(store.attrs.get("dataset", "")))
    if got != (str(model), str(dataset)):
        raise DataError(f"{store.path}: holds the features of model {got[0]!r} on data set "
                        f"{got[1]!r}, not of model {model!r} on {dataset!r}; delete it and rerun "
                        "its extract_features job")
