"""Per-layer patch features on disk: HDF5 laid out as netCDF4, so that
``xarray.open_dataset(path, engine="h5netcdf")`` shows named dimensions.

Variables (dims):
    tokens (image, layer, patch, channel) float16, one chunk per (image, layer)
    cls    (image, layer, channel)        float16, only for models with a class token
    image  (image,)  string ids matching the data set manifest
    layer  (layer,)  block index, 0-based; ``n_blocks`` = the final-norm output (attr norm_layer)
    ln_weight, ln_bias (layer, channel) float32, timm models only: the LayerNorm reading each layer
    split       (split,)  string: the manifest splits of the images (``stats_*`` rows)
    image_split (image,)  int32: each image's row in ``split``
    stats_count (split, layer) int64: patch tokens behind each row of the statistics
    stats_mean, stats_m2 (split, layer, channel) float64: per split and layer, the mean and the
                sum of squared deviations of every patch token's channels, accumulated while
                writing (:mod:`patchlens.features.moments`): the channel statistics of any set
                of splits follow from these without reading ``tokens`` again
Attributes: model, dataset, source, weights_sha256, patch_size, input_size (H, W), grid (h, w),
n_blocks (blocks in the network), mean, std (input normalisation), patchlens_version, ...

Writers stream batches into a temporary file and rename it at the end (see :mod:`patchlens.io`).
Every variable but ``image`` is stored with HDF5's per-chunk Fletcher-32 checksum: a flipped
byte in a finished file makes the read fail (:class:`FeatureStore` raises a DataError naming the
file) instead of giving different numbers. The writer refuses non-finite tokens (inf/NaN, e.g.
from NaN weights or a zero ``std``) with a DataError naming the model, data set and layer, and
nothing is kept. A file is renamed into place only when no write failed and, after closing, it reads back with
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
from patchlens.features.layer_view import LayerView, row_index
from patchlens.features.h5safe import SinkOnFailure, checked_file, checksummed, first_bad_row
from patchlens.features.moments import Moments, row_sums
from patchlens.io import atomic_path


class FeatureWriteError(DataError):
    """A feature file could not be written or does not read back as written (disk full, I/O
    error); the temporary file is removed and nothing is renamed into place."""


def _crc(block: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(block).view(np.uint8).reshape(-1))


class FeatureWriter:
    """Stream (batch, layer, patch, channel) arrays into a feature file.

    Use as a context manager; the file appears under ``path`` only when the block exits cleanly,
    every image was written and every token was finite. ``groups`` (one label per image, e.g.
    the manifest split; default one group ``all``) are the rows of the ``stats_*`` variables."""

    def __init__(self, path, images: list[str], layers: list[int], grid: tuple[int, int],
                 channels: int, has_cls: bool, attrs: dict, extra: dict | None = None,
                 groups: list[str] | None = None):
        self.path = Path(path)
        self.extra = dict(extra or {})  # small (layer, channel) float32 variables, e.g. ln_weight
        self.images, self.layers = list(images), [int(x) for x in layers]
        self.grid, self.channels, self.has_cls = tuple(grid), int(channels), has_cls
        self.attrs = dict(attrs)
        groups = ["all"] * len(self.images) if groups is None else [str(g) for g in groups]
        if len(groups) != len(self.images):
            raise ValueError(f"{len(groups)} group labels for {len(self.images)} images")
        names = list(dict.fromkeys(groups))
        self._group = np.array([names.index(g) for g in groups], np.int32)
        self._moments = Moments(names, len(self.layers), self.channels)
        self._n = 0
        self._failed: BaseException | None = None  # first write error, even if caught upstream
        self._crcs: dict[str, list[int]] = {"tokens": [], "cls": []}

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        self._tmp = tmp = self._atomic.__enter__()
        try:
            self._open(tmp)
        except BaseException as exc:
            self._close()
            self._atomic.__exit__(type(exc), exc, None)
            raise
        return self

    def _open(self, tmp) -> None:
        self._fobj = self._sink = SinkOnFailure(tmp)
        # no chunk cache: each (image, layer) chunk is written whole, straight to the file, so a
        # write error is raised by the write call instead of a later, ignored cache flush
        self._h5 = h5py.File(self._fobj, "w", rdcc_nbytes=0)
        self._f = f = h5netcdf.File(self._h5, "w")
        n, L, P, C = len(self.images), len(self.layers), self.grid[0] * self.grid[1], self.channels
        f.dimensions = {"image": n, "layer": L, "patch": P, "channel": C,
                        "split": len(self._moments.groups)}
        f.create_variable("image", ("image",), data=np.array(self.images, dtype=object),
                          dtype=h5py.string_dtype())
        f.create_variable("layer", ("layer",), data=np.array(self.layers, dtype="int32"))
        f.create_variable("tokens", ("image", "layer", "patch", "channel"), dtype="f2",
                          **checksummed(chunks=(1, 1, P, C)))
        if self.has_cls:
            f.create_variable("cls", ("image", "layer", "channel"), dtype="f2",
                              **checksummed(chunks=(1, L, C)))
        for name, arr in self.extra.items():
            f.create_variable(name, ("layer", "channel"), data=np.asarray(arr, np.float32),
                              **checksummed())
        attrs = {"patchlens_version": __version__, **self.attrs,
                 "grid": np.array(self.grid, dtype="int32")}
        for k, v in attrs.items():
            f.attrs[k] = v if not isinstance(v, (list, tuple)) else np.asarray(v)

    def write(self, tokens: np.ndarray, cls: np.ndarray | None = None, sums=None) -> None:
        """Append a batch: tokens (b, L, P, C), cls (b, L, C); ``sums``: the per-image float64
        channel sums and sums of squares of ``tokens`` as stored (float16), each (b, L, C),
        where the caller computed them (on the device); else they are computed here."""
        b = tokens.shape[0]
        expect = (len(self.layers), self.grid[0] * self.grid[1], self.channels)
        if tuple(tokens.shape[1:]) != expect:
            raise ValueError(f"token batch shape {tokens.shape[1:]} != (layer, patch, channel) {expect}")
        if self._failed is not None:
            raise self._failed if isinstance(self._failed, DataError) else \
                self._error(self._failed)
        if self._n + b > len(self.images):
            raise ValueError(f"{self.path}: batch of {b} past the {len(self.images)} images")
        sl = slice(self._n, self._n + b)
        tokens = np.asarray(tokens, np.float16)
        arrays = {"tokens": tokens}
        if self.has_cls:
            arrays["cls"] = np.asarray(cls, np.float16)
        self._accumulate(arrays, self._group[sl], sums)
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

    def _accumulate(self, arrays: dict, groups: np.ndarray, sums) -> None:
        """Fold the batch's per-image channel sums into the per-(group, layer) moments; refuse
        non-finite tokens (a finite float64 sum of float16 values means every value is
        finite)."""
        s, q = sums if sums is not None else row_sums(arrays["tokens"])
        P = self.grid[0] * self.grid[1]
        for g in np.unique(groups):
            rows = groups == g
            self._moments.add_sums(int(g), int(rows.sum()) * P, s[rows].sum(0), q[rows].sum(0))
        finite = np.isfinite(s).all(axis=(0, 2)) & np.isfinite(q).all(axis=(0, 2))
        if finite.all() and "cls" in arrays:
            finite = np.isfinite(arrays["cls"]).all(axis=(0, 2))
        if not finite.all():
            layer = self.layers[int(np.argmin(finite))]
            err = DataError(
                f"{self.path}: model {self.attrs.get('model', '?')!r} gives non-finite tokens "
                f"(inf/NaN) on data set {self.attrs.get('dataset', '?')!r} at layer {layer}; "
                "nothing was kept -- check the model's weights and its mean/std (no std may be "
                "0), then rerun the extraction rule")
            self._failed = err
            raise err

    def _stats(self) -> None:
        """Write the accumulated per-split channel moments (small float64 variables)."""
        f, m = self._f, self._moments
        f.create_variable("split", ("split",), data=np.array(m.groups, dtype=object),
                          dtype=h5py.string_dtype())
        f.create_variable("image_split", ("image",), data=self._group, **checksummed())
        f.create_variable("stats_count", ("split", "layer"), data=m.count, **checksummed())
        f.create_variable("stats_mean", ("split", "layer", "channel"), data=m.mean,
                          **checksummed())
        f.create_variable("stats_m2", ("split", "layer", "channel"), data=m.m2,
                          **checksummed())

    def _error(self, exc: BaseException) -> FeatureWriteError:
        sink = getattr(self, "_sink", None)
        exc = (sink.error if sink is not None else None) or exc  # the OS's reason, not HDF5's
        errno = getattr(exc, "errno", None)
        reason = (f"[Errno {errno}] {os.strerror(errno)}" if errno else
                  f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
        return FeatureWriteError(
            f"{self.path}: writing the feature file failed ({reason}); nothing was kept -- "
            "free disk space or fix the file system, then rerun the extraction rule")

    def _close(self) -> BaseException | None:
        """Close the netCDF layer, then the HDF5 file, then the file object, each even if the one
        before failed; the first error, or None."""
        first = None
        for obj in ("_f", "_h5", "_fobj"):
            handle = getattr(self, obj, None)
            if handle is None:
                continue
            try:
                handle.close()
            except Exception as err:  # noqa: BLE001 -- the first one is reported
                first = first or err
            setattr(self, obj, None)
        return first

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self._failed is None and self._n == len(self.images):
            try:
                self._stats()
                self._f.flush()  # raises what a close would only print
            except Exception as err:  # noqa: BLE001
                self._failed = err
        closing = self._close() or self._sink.error  # always, even after a failure
        self._failed = self._failed or closing
        if exc_type is None and self._failed is None and self._n != len(self.images):
            err = RuntimeError(f"{self.path}: wrote {self._n} of {len(self.images)} images")
            self._atomic.__exit__(type(err), err, None)  # a caller bug, not a disk error
            raise err
        if exc_type is None and self._failed is None:
            bad = self._verify()
            if bad:
                self._failed = RuntimeError(bad)
        if exc_type is None and self._failed is not None:
            err = (self._failed if isinstance(self._failed, DataError) else
                   self._error(self._failed))
            self._atomic.__exit__(type(err), err, None)  # removes the temporary file
            raise err from self._failed
        return self._atomic.__exit__(exc_type, exc, tb)

    def _verify(self) -> str | None:
        """Reopen the closed temporary file: every image and every chunk as written, else why
        not (one phrase). Reads each chunk's stored bytes as they are, where the reopened file's
        chunk index says they are (no filter pipeline, no array): the CRC-32 of a row's chunks,
        Fletcher-32 trailer cut off, chained in layer order, is the CRC-32 of the row that was
        written (:func:`~patchlens.features.h5safe.first_bad_row`)."""
        try:
            with h5py.File(self._tmp, "r") as f:
                for name, crcs in self._crcs.items():
                    if not crcs:
                        continue
                    ds = f[name]
                    if ds.shape[0] != len(self.images):
                        return f"{name} holds {ds.shape[0]} of {len(self.images)} images"
                    bad = first_bad_row(ds, crcs, self._tmp)
                    if bad is not None:
                        return (f"{name} of image {self.images[bad]!r} reads back different "
                                "from what was written")
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
        # every read of a dataset, also through ``_f``, raises DataError on a checksum failure
        self._f = checked_file(self.path, "extraction")
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

    def split_moments(self):
        """The channel moments accumulated while the file was written, per manifest split:
        (splits [S], image_split (image,) int, count (S, layer) int, mean (S, layer, C),
        M2 (S, layer, C) float64), or None for a file written before they existed."""
        f = self._f
        if "stats_m2" not in f:
            return None
        splits = [s.decode() if isinstance(s, bytes) else str(s) for s in f["split"][:]]
        return (splits, f["image_split"][:], f["stats_count"][:], f["stats_mean"][:],
                f["stats_m2"][:])

    def _rows(self, images):
        if images is None:
            return slice(None), None
        idx = row_index(self._index, images, self.path)
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

    def layer_view(self, layer: int) -> LayerView:
        """Layer ``layer`` read once into memory (float16, as stored), with this store's read
        interface restricted to it (:class:`~patchlens.features.layer_view.LayerView`)."""
        li = self._layer_pos(layer)
        return LayerView(self, layer, self._f["tokens"][:, li],
                         self._f["cls"][:, li] if self.has_cls else None)

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
