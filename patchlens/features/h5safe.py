"""HDF5 files that fail loudly: the per-chunk Fletcher-32 checksum on write, reads that turn a
checksum (or any low-level read) failure into a DataError naming the file and the rule to rerun,
and a file object that lets a file whose write failed (disk full) be closed without a crash."""
from __future__ import annotations

import io
import zlib

import h5py

from patchlens.errors import DataError


def checksummed(**kw) -> dict:
    """h5py dataset options of every numeric variable: the per-chunk Fletcher-32 checksum."""
    return {"fletcher32": True, **kw}


class SinkOnFailure(io.RawIOBase):
    """The file object HDF5 writes through (h5py's ``fileobj`` driver): after the first failed
    write (disk full, I/O error) every further write is dropped, so that closing the doomed file
    -- which makes HDF5 flush its metadata -- succeeds instead of leaving HDF5 objects that crash
    the interpreter (SIGSEGV) when it exits. The file is deleted anyway."""

    def __init__(self, path):
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115 -- closed in close()
        self.error: OSError | None = None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        return self._f.readinto(b)

    def write(self, b):
        if self.error is not None:
            return len(memoryview(b))
        try:
            return self._f.write(b)
        except OSError as exc:
            self.error = exc
            raise

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def truncate(self, size=None):
        if self.error is not None:
            return self._f.tell() if size is None else size
        try:
            return self._f.truncate(size)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        if self.error is None:
            try:
                self._f.flush()
            except OSError as exc:
                self.error = exc
                raise

    def close(self):
        try:
            super().close()  # flushes first
        except OSError as exc:
            self.error = self.error or exc
        try:
            self._f.close()
        except OSError as exc:
            self.error = self.error or exc


class _CheckedDataset:
    """An h5py dataset whose reads raise DataError (naming the file) instead of OSError."""

    def __init__(self, ds, path, rule: str):
        self._ds, self._path, self._rule = ds, path, rule

    def __getitem__(self, key):
        try:
            return self._ds[key]
        except OSError as exc:
            raise read_error(self._path, exc, self._rule) from None

    def __len__(self):
        return len(self._ds)

    def __getattr__(self, name):
        return getattr(self._ds, name)


class _CheckedFile:
    """An open h5py file whose datasets are :class:`_CheckedDataset`."""

    def __init__(self, f, path, rule: str):
        self._h5, self._path, self._rule = f, path, rule

    def __getitem__(self, name):
        obj = self._h5[name]
        return _CheckedDataset(obj, self._path, self._rule) if isinstance(obj, h5py.Dataset) \
            else obj

    def __contains__(self, name):
        return name in self._h5

    def __getattr__(self, name):
        return getattr(self._h5, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._h5.close()


def read_error(path, exc: BaseException, rule: str) -> DataError:
    """The one line for a stored HDF5 file that does not read back (checksum mismatch)."""
    text = " ".join(str(exc).split())[:200]
    return DataError(f"{path}: stored data fail their checksum or cannot be read ({text}); the "
                     f"file is corrupt -- delete it and rerun the {rule} rule")


def checked_file(path, rule: str) -> _CheckedFile:
    """Open ``path`` read-only; a file that does not open and every failing read is a
    DataError naming it and ``rule`` (the rule that writes it)."""
    try:
        return _CheckedFile(h5py.File(path, "r"), path, rule)
    except (OSError, FileNotFoundError) as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())[:200]}); "
                        f"delete it and rerun the {rule} rule") from None


def first_bad_row(ds, crcs: list[int], path, threads: int = 2) -> int | None:
    """The first image row of an unfiltered or Fletcher-32 dataset chunked one row (cls) or one
    (row, layer) (tokens) at a time whose stored bytes differ from the CRC-32 written, or None.

    HDF5's chunk index of the reopened file gives where every chunk lies; its bytes are read
    from the file itself (memory-mapped, the Fletcher-32 trailer cut off) and CRC-32s of a row's
    chunks are chained in layer order, on ``threads`` threads (zlib releases the GIL)."""
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    per_row = ds.shape[1] if ds.chunks[1] == 1 else 1  # chunks per image row
    trailer = 4 if ds.fletcher32 else 0  # the checksum trailer is not data
    where = {}
    ds.id.chunk_iter(lambda c: where.__setitem__(c.chunk_offset[:2], c))
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)

        def bad_in(rows) -> int | None:
            for i in rows:
                crc = 0
                for li in range(per_row):
                    c = where.get((i, li))
                    if c is None or c.filter_mask or c.byte_offset + c.size > len(view):
                        return i  # never written (no chunk), or a filter skipped
                    crc = zlib.crc32(view[c.byte_offset:c.byte_offset + c.size - trailer], crc)
                if crc != crcs[i]:
                    return i
            return None

        n = len(crcs)
        parts = [range(k * n // threads, (k + 1) * n // threads) for k in range(threads)]
        try:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                found = [r for r in pool.map(bad_in, parts) if r is not None]
        finally:
            view.release()
    return min(found) if found else None
