"""Issue 18, cases 1 and 3: a resumed download never splices two versions of its source, and an
archive is trusted (first-use checksum) only once it decompressed to its end intact."""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
from helpers.archives import no_proxy, served_toy_recipe, tar_gz, tar_gz_of
from helpers.http_server import FileServer

from patchlens.data import recipes
from patchlens.data.download import extract, extraction_marker, fetch
from patchlens.errors import DataError

NAME = "ckpt.bin"
SIZE = 300_000


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    no_proxy(monkeypatch)


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / NAME).write_bytes(np.random.default_rng(1).bytes(SIZE))
    with FileServer(root) as server:
        yield server, root / NAME


def _start_then_change(server, src, dest, new: bytes, new_mtime: float | None = None) -> None:
    """A first run that stops after 120 kB (the .part is kept), then the source changes."""
    server.truncate[NAME] = 120_000
    with pytest.raises(DataError, match="rerun to resume"):
        fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.with_name(NAME + ".part").stat().st_size == 120_000
    del server.truncate[NAME]
    before = src.stat().st_mtime
    unchanged = src.read_bytes() == new
    src.write_bytes(new)
    if new_mtime is None and unchanged:  # the same file, untouched: its Last-Modified too
        new_mtime = before                # (a rewrite in a later second would change it)
    if new_mtime is not None:
        os.utime(src, (new_mtime, new_mtime))


def test_same_source_is_resumed_with_if_range(www, tmp_path):
    server, src = www
    old = src.read_bytes()
    dest = tmp_path / NAME
    _start_then_change(server, src, dest, old)  # unchanged
    fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.read_bytes() == old
    name, headers = server.headers[-1]
    want = '"' + hashlib.sha256(old).hexdigest()[:16] + '"'
    assert headers["Range"] == "bytes=120000-" and headers["If-Range"] == want
    assert not dest.with_name(NAME + ".part.json").exists()  # the record goes with the .part


def test_changed_source_of_equal_length_restarts_from_zero(www, tmp_path):
    server, src = www
    new = np.random.default_rng(2).bytes(SIZE)  # v2: same length, other bytes
    dest = tmp_path / NAME
    _start_then_change(server, src, dest, new)
    fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.read_bytes() == new  # not 120 kB of v1 + the rest of v2
    assert server.requests[-1] == (NAME, "bytes=120000-")  # asked with If-Range, got a 200


def test_server_ignoring_if_range_is_caught_by_its_etag(www, tmp_path):
    server, src = www
    server.if_range = False  # serves the range of the new file (206) whatever If-Range says
    new = np.random.default_rng(3).bytes(SIZE)
    dest = tmp_path / NAME
    _start_then_change(server, src, dest, new)
    fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.read_bytes() == new
    assert server.requests[-2:] == [(NAME, "bytes=120000-"), (NAME, None)]


def test_changed_length_is_caught_without_etag(www, tmp_path):
    server, src = www
    server.etag, server.if_range = False, False  # Last-Modified only, and If-Range ignored
    new = np.random.default_rng(4).bytes(SIZE + 5000)
    dest = tmp_path / NAME
    # same Last-Modified second as v1: only the total length tells the versions apart
    _start_then_change(server, src, dest, new, new_mtime=src.stat().st_mtime)
    fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.read_bytes() == new
    assert server.requests[-2:] == [(NAME, "bytes=120000-"), (NAME, None)]


def test_last_modified_is_the_validator_without_etag(www, tmp_path):
    server, src = www
    server.etag = False
    new = np.random.default_rng(5).bytes(SIZE)
    dest = tmp_path / NAME
    _start_then_change(server, src, dest, new, new_mtime=src.stat().st_mtime + 60)
    fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.read_bytes() == new
    assert "If-Range" in server.headers[-1][1]


def test_partial_download_without_validator_is_not_resumed(www, tmp_path):
    server, src = www
    server.etag = server.last_modified = False  # nothing identifies the file's version
    new = np.random.default_rng(6).bytes(SIZE)
    dest = tmp_path / NAME
    _start_then_change(server, src, dest, new)
    fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.read_bytes() == new and server.requests[-1] == (NAME, None)


def test_changed_source_within_one_run_restarts(www, tmp_path):
    """A dropped connection resumed at once, the file having changed in between (and a server
    that serves the range anyway)."""
    server, src = www
    server.if_range = False
    server.cut[NAME] = [100_000]
    new = np.random.default_rng(7).bytes(SIZE)
    server.versions[NAME] = [new]
    dest = tmp_path / NAME
    fetch(server.url(NAME), dest, retries=0, progress=False)
    assert dest.read_bytes() == new
    assert server.requests == [(NAME, None), (NAME, "bytes=100000-"), (NAME, None)]


# -- case 3: an archive that does not decompress to its end intact is never trusted -----------
def _toy_tgz() -> bytes:
    rng = np.random.default_rng(0)
    return tar_gz({"tree/a.bin": rng.bytes(30_000), "tree/b.txt": b"b" * 5000})


@pytest.mark.parametrize("cut", [1, 4, 8, 12])
def test_gzip_missing_its_last_bytes_is_refused(tmp_path, cut):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_toy_tgz()[:-cut])  # the trailer (CRC-32, length) and the end of the data
    with pytest.raises(DataError, match="corrupt or truncated archive"):
        extract(path, tmp_path / "out", progress=False)
    assert not extraction_marker(path, tmp_path / "out").exists()
    assert not (tmp_path / "out" / "tree").exists()


def test_every_single_bit_flip_of_a_gzip_archive_is_refused(tmp_path):
    """Flips past the 10-byte gzip header (whose mtime / OS bytes do not touch the content)."""
    good = _toy_tgz()
    extract_ok = tmp_path / "ok.tar.gz"
    extract_ok.write_bytes(good)
    extract(extract_ok, tmp_path / "ok", progress=False)  # the intact archive extracts
    positions = np.linspace(10, len(good) - 1, 60).astype(int)
    accepted = []
    for i, pos in enumerate(positions):
        bad = bytearray(good)
        bad[pos] ^= 1 << (i % 8)
        path = tmp_path / f"f{i}.tar.gz"
        path.write_bytes(bytes(bad))
        try:
            extract(path, tmp_path / f"out{i}", progress=False)
            accepted.append(int(pos))
        except DataError:
            pass
    assert accepted == []


def test_zip_member_with_a_flipped_bit_is_refused(tmp_path):
    buf = io.BytesIO()
    data = np.random.default_rng(0).bytes(20_000)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("DAVIS/a.bin", data)
    raw = bytearray(buf.getvalue())
    raw[raw.index(data[:64]) + 10_000] ^= 4  # inside the stored member: only its CRC tells
    path = tmp_path / "a.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt or truncated archive"):
        extract(path, tmp_path / "out", progress=False)


@pytest.fixture
def toy_recipe(tmp_path, monkeypatch):
    """A recipe without a published checksum (like SPair-71k) served locally."""
    from PIL import Image

    src = tmp_path / "src"
    for split in ("train", "val"):
        for i in range(2):
            p = src / "toy" / split / "cls" / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(p)
    (src / "toy" / "noise.bin").write_bytes(np.random.default_rng(0).bytes(50_000))
    payload = tar_gz_of(src, ("toy",))
    with served_toy_recipe(monkeypatch, tmp_path, payload) as server:
        yield server, payload


def test_download_missing_its_gzip_trailer_records_no_checksum(tmp_path, toy_recipe):
    server, payload = toy_recipe
    server.send_length = False  # the transfer looks complete
    server.truncate["toy.tar.gz"] = len(payload) - 8  # every member intact, the trailer lost
    data = tmp_path / "data"
    with pytest.raises(DataError, match=r"corrupt or truncated archive .*nothing was recorded"):
        recipes.prepare("toy", data, tmp_path / "out", {"progress": False})
    assert not (data / "checksums.json").exists() and not (data / "toy.tar.gz").exists()
    del server.truncate["toy.tar.gz"]
    recipes.prepare("toy", data, tmp_path / "out", {"progress": False})
    ledger = json.loads((data / "checksums.json").read_text())
    assert ledger == {"toy.tar.gz": hashlib.sha256(payload).hexdigest()}
