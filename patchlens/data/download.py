"""Getting archive bytes onto disk: resumable, checksummed download; safe extraction; file placing.

Only the standard library (``urllib``) is used for the transfer: ``pooch`` verifies and retries
but does not resume a partial download, and the data set archives here are 0.3-2 GB.

* :func:`fetch` downloads ``url`` to ``dest``. Partial data lives in ``dest`` + ``.part`` and is
  continued with an HTTP ``Range`` + ``If-Range`` request only while the server confirms the
  same file (else from zero; :mod:`patchlens.data.transfer`); connection errors and cut-short
  transfers are retried with exponential backoff. The checksum is verified on the ``.part``
  file and only a matching file is renamed to ``dest``, so a file under ``dest`` is always
  complete and verified. A local path or ``file://`` URL is copied instead.
* :func:`locked`: one job at a time per downloaded file (an ``flock`` on ``<file>.lock``).
* :func:`extract` unpacks ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``/``.zip`` into a
  temporary directory next to the target, refuses members that would land outside it (path
  traversal, escaping links, device files), reads a compressed stream through to its end so
  its CRC and length trailer are verified (and every zip member's CRC), moves the result into
  place and writes a marker so a second call is a no-op.
* :func:`place_file` puts a source file into a converted data set (hard link, else copy).

Every failure is a :class:`~patchlens.errors.DataError` whose one-line message names the URL
or file and says what to do.
"""
from __future__ import annotations

import bz2
import contextlib
import fcntl
import glob
import gzip
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from patchlens.data.transfer import (CHUNK, SourceUnreachable, discard_partial, download,
                                     one_line)
from patchlens.errors import DataError
from patchlens.io import digest

__all__ = ["ChecksumMismatch", "SourceUnreachable", "extract", "extraction_marker", "fetch",
           "locked", "place_file"]


class ChecksumMismatch(DataError):
    """A downloaded or present file does not have the expected checksum."""


# -- checksums (hashing: patchlens.io.digest) ---------------------------------------------------
def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    return {a: v.strip().lower() for a, v in (("sha256", sha256), ("md5", md5)) if v}


def _mismatch(path: Path, expected: dict[str, str]) -> str | None:
    """None when every expected digest matches, else 'algo <got>, expected <want>'."""
    if not expected:
        return None
    got = digest(path, tuple(expected))
    for algo, want in expected.items():
        if got[algo] != want:
            return f"{algo} {got[algo]}, expected {want}"
    return None


def _local_source(url: str) -> Path | None:
    """The path for a local file or file:// URL, None for a network URL."""
    parsed = urllib.parse.urlparse(str(url))
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https", "ftp"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DataError(f"{url}: unsupported URL scheme {parsed.scheme!r}; use http(s), ftp, "
                        "file:// or a local path")
    return Path(url)


# -- download -----------------------------------------------------------------------------------
def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, md5: str | None = None,
          retries: int = 3, timeout: float = 60, progress: bool = True,
          backoff: float = 1.0, cache_key: str = "data_dir") -> Path:
    """Download ``url`` to ``dest`` with resume, retries and checksum verification.

    Protocol: an existing ``dest`` is verified and reused (never downloaded again); otherwise
    bytes go to ``dest.part``, resumed from its current size with ``Range: bytes=N-`` and
    ``If-Range`` (the validator recorded when the ``.part`` was started, in ``dest.part.json``)
    only while the server confirms the same file and total length; otherwise the ``.part``
    restarts from zero (:mod:`patchlens.data.transfer`). Connection errors, timeouts,
    retryable HTTP codes and transfers that end before ``Content-Length`` are retried, at once
    when the attempt added bytes, else after ``backoff * 2**k`` seconds; after ``retries``
    retries in a row that add nothing the download stops. The complete ``.part`` is checked
    against ``sha256`` / ``md5`` (all that are given) and renamed to ``dest`` only when they
    match; a mismatching ``.part`` is deleted so the next run does not resume a bad file. A
    transfer still short after the retries keeps its ``.part`` (the next run resumes it).

    ``url`` may be a local path or ``file://`` URL (an archive the user already has): it is
    copied, then verified the same way. ``cache_key`` names the config key of the directory
    ``dest`` is in, for the messages (``data_dir``, ``weights_dir``).

    Raises:
        DataError: unreachable URL, HTTP error, truncated transfer, checksum mismatch, or a
            present ``dest`` that fails its checksum; never leaves an unverified ``dest``.
    """
    dest = Path(dest)
    expected = _expected(sha256, md5)
    if dest.exists():
        bad = _mismatch(dest, expected)
        if bad:
            raise ChecksumMismatch(f"{dest}: present but fails its checksum ({bad}); it is not "
                                   f"the file {url} should give: delete it and rerun")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    local = _local_source(url)
    if local is not None:
        if not local.is_file():
            raise DataError(f"{local}: not found (given as the source of {dest.name}); fix the "
                            f"path, or place the file at {dest}")
        discard_partial(part)
        shutil.copyfile(local, part)
    else:
        download(url, dest, part, retries, timeout, progress, backoff, cache_key)
    bad = _mismatch(part, expected)
    if bad:
        discard_partial(part)
        raise ChecksumMismatch(f"{url}: the server sent a different file than expected for "
                               f"{dest.name} ({bad}); the bad download was deleted; check the URL "
                               f"(or the checksum in the recipe), or place the right file at "
                               f"{dest}")
    os.replace(part, dest)
    discard_partial(part)  # its entity record
    return dest


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Hold an exclusive ``flock`` on ``<path>.lock`` (created beside ``path``): concurrent jobs
    that download, extract or record ``path`` take turns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- extraction ---------------------------------------------------------------------------------
def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    raise DataError(f"{path}: unknown archive type; expected .tar, .tar.gz, .tgz or .zip")


def _escapes(name: str) -> bool:
    """Whether an archive member name would resolve outside the extraction directory."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    norm = posixpath.normpath(name.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def _check_tar_member(member: tarfile.TarInfo, archive: Path, out_dir: Path) -> None:
    where = f"{archive}: refuses member {member.name!r}"
    if _escapes(member.name):
        raise DataError(f"{where}: it would be written outside {out_dir} (path traversal); the "
                        "archive is not trustworthy: delete it and get it from the official URL")
    if member.issym():
        target = posixpath.join(posixpath.dirname(member.name), member.linkname)
        if member.linkname.startswith("/") or _escapes(target):
            raise DataError(f"{where}: its link to {member.linkname!r} points outside {out_dir}; "
                            "delete the archive and get it from the official URL")
    elif member.islnk() and _escapes(member.linkname):
        raise DataError(f"{where}: its hard link to {member.linkname!r} points outside "
                        f"{out_dir}; delete the archive and get it from the official URL")
    elif not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DataError(f"{where}: device or special file; delete the archive and get it from "
                        "the official URL")


_MAGIC = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def _decompressed(archive: Path):
    """A binary stream of the archive's tar bytes, decompressed by the module that checks the
    compression's own integrity data when it reaches the end (gzip: CRC-32 and length trailer;
    bzip2: block and stream CRCs; xz: its check), chosen by the file's magic bytes."""
    with open(archive, "rb") as fh:
        head = fh.read(6)
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            return opener(archive, "rb")
    return open(archive, "rb")


def _extract_tar(archive: Path, tmp: Path, out_dir: Path, progress: bool) -> None:
    # stream mode: one sequential pass; after the last member the rest of the stream (the tar
    # padding and the compression trailer) is read to its end, where a truncated or corrupt
    # stream raises, so no archive is accepted that does not decompress to its end intact
    with _decompressed(archive) as stream, tarfile.open(fileobj=stream, mode="r|") as tar, \
            tqdm(desc=f"extract {archive.name}", unit=" files", disable=not progress,
                 leave=False) as bar:
        for member in tar:
            _check_tar_member(member, archive, out_dir)
            try:
                tar.extract(member, tmp, filter="data")
            except tarfile.FilterError as exc:
                raise DataError(f"{archive}: refuses member {member.name!r} ({one_line(exc)}); "
                                "delete the archive and get it from the official URL") from None
            bar.update(1)
        while stream.read(CHUNK):
            pass


def _extract_zip(archive: Path, tmp: Path, out_dir: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            if _escapes(info.filename):
                raise DataError(f"{archive}: refuses member {info.filename!r}: it would be written "
                                f"outside {out_dir} (path traversal); the archive is not "
                                "trustworthy: delete it and get it from the official URL")
        for info in tqdm(members, desc=f"extract {archive.name}", unit=" files",
                         disable=not progress, leave=False):
            zf.extract(info, tmp)


def extraction_marker(archive: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """The file whose presence says ``archive`` has been fully extracted into ``out_dir``."""
    return Path(out_dir) / f".{Path(archive).name}.extracted"


def extract(archive: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True,
            expect: str | None = None, keep: str | None = None) -> Path:
    """Extract a .tar/.tar.gz/.tgz/.zip archive into ``out_dir`` safely and once.

    Members go to a temporary directory inside ``out_dir`` first; a member whose path is
    absolute or climbs out with ``..``, a link pointing outside, or a device file makes the
    whole extraction fail with nothing moved into place (tar members are also passed through
    Python's ``data`` extraction filter, PEP 706). Afterwards each top-level entry is renamed
    into ``out_dir`` (replacing a same-named entry) and a marker file is written last, so a
    second call returns at once, and a killed extraction is redone. ``expect`` (a path relative
    to ``out_dir``) must also exist for the marker to count, so a deleted tree is re-extracted.
    ``keep`` (a top-level name) moves only that entry into place and discards the rest of the
    archive, so an archive carrying other trees or a ``checksums.json`` replaces nothing else;
    an archive without it is a DataError. Without ``keep``, names starting with a dot (the
    markers, lock files) are never replaced.

    Returns ``out_dir``.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    marker = extraction_marker(archive, out_dir)
    if marker.exists() and (expect is None or (out_dir / expect).exists()):
        return out_dir
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found; download it (or place it there) first")
    kind = _archive_kind(archive)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for stale in out_dir.glob(f".{glob.escape(archive.name)}.*.tmp"):  # a killed extraction's
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".tmp", dir=out_dir))
    try:
        try:
            (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, out_dir, progress)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error,
                lzma.LZMAError) as exc:
            raise DataError(f"{archive}: corrupt or truncated archive ({one_line(exc)}); delete "
                            "it and rerun to download it again") from None
        entries = sorted(tmp.iterdir())
        if keep is not None:
            entries = [e for e in entries if e.name == keep]
            if not entries:
                raise DataError(f"{archive}: has no top-level {keep!r}; not the expected "
                                "archive")
        for entry in entries:
            if entry.name.startswith("."):
                continue
            target = out_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
        marker.write_text(f"{archive.name}\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# -- placing files into a converted data set ---------------------------------------------------
def place_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a copy of ``src``: a hard link where the file system allows, else a byte
    copy; written under a temporary name and renamed, so ``dst`` is never half-written."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError(f"{src}: missing; the source tree is incomplete: re-extract the archive")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
