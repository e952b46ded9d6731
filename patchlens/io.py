"""File I/O shared by every stage: atomic output (write to a temporary sibling, rename on
success, so a killed job never leaves a file that looks complete; the file gets the mode the
umask gives, like any ``open()``), removal of the temporaries a killed job left behind,
streaming file digests, and tables that carry their own integrity check.

Tables (CSV, parquet) written by :func:`write_csv` / :func:`write_parquet` get their SHA-256
recorded beside them, ``<file>.sha256`` in ``sha256sum`` format (written atomically after the
file), and :func:`read_table` -- the one reader of every table a rule wrote -- verifies it from
the same bytes it parses: one changed digit is a DataError naming the file and the rule to rerun,
never a different number. A table without that record (written by hand or by an older version)
is read unverified."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on clean exit rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600; outputs are shared like any other file
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` siblings that :func:`atomic_path` leaves when a job is killed
    (``kill -9`` skips every cleanup). Call it when the job that writes ``path`` starts again:
    Snakemake never runs two jobs for one output, so no live writer owns them. Returns the
    removed paths."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of a table is recorded: ``<file>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _record_checksum(path: Path, hexdigest: str) -> None:
    with atomic_path(checksum_path(path)) as tmp:
        tmp.write_text(f"{hexdigest}  {path.name}\n")


def write_csv(df, path) -> None:
    """Write a pandas DataFrame as CSV atomically, its SHA-256 recorded beside it."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
        hexdigest = sha256sum(tmp)
    _record_checksum(Path(path), hexdigest)


def write_parquet(df, path) -> None:
    """Write a pandas DataFrame as parquet atomically, its SHA-256 recorded beside it."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
        hexdigest = sha256sum(tmp)
    _record_checksum(Path(path), hexdigest)


def read_table(path: str | os.PathLike, **kwargs):
    """A table a rule wrote (``.parquet`` or CSV, by suffix; ``kwargs`` go to pandas), its
    recorded SHA-256 verified first (:func:`write_csv`). A mismatch, or a parquet file that does
    not parse, is a DataError naming the file; pandas' own errors for an unreadable CSV and
    FileNotFoundError pass through for the caller to phrase."""
    import io

    import pandas as pd

    from patchlens.errors import DataError

    path = Path(path)
    data = path.read_bytes()
    record = checksum_path(path)
    if record.exists():
        want = record.read_text().split()[:1]
        if [hashlib.sha256(data).hexdigest()] != want:
            raise DataError(f"{path}: its content does not match the SHA-256 recorded in "
                            f"{record.name} (the file changed after its rule wrote it); delete "
                            "both and rerun the rule that writes it")
    if path.suffix != ".parquet":
        return pd.read_csv(io.BytesIO(data), **kwargs)
    try:
        return pd.read_parquet(io.BytesIO(data), **kwargs)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}); delete it "
                        "and rerun the rule that writes it") from None


def write_json(obj, path) -> None:
    """Write JSON atomically (sorted keys, so equal content gives equal bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def digest(path: str | os.PathLike, algorithms: tuple[str, ...] = ("sha256",),
           chunk: int = 1 << 20) -> dict[str, str]:
    """Hex digests of a file for each hashlib algorithm name, computed in one streaming pass."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while block := f.read(chunk):
            for h in hashes.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashes.items()}


def sha256sum(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    return digest(path)["sha256"]
