"""fetch (resume, retries, checksums, errors) and extract (safety, once) against a local server."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile

import numpy as np
import pytest
from helpers.archives import no_proxy, tar_gz
from helpers.http_server import FileServer

from patchlens.data.download import (SourceUnreachable, extract, extraction_marker, fetch,
                                     place_file)
from patchlens.data.recipes import Archive, obtain
from patchlens.errors import DataError
from patchlens.io import digest, sha256sum

NAME = "archive.tar.gz"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    no_proxy(monkeypatch)


@pytest.fixture
def served(tmp_path):
    """(server, archive bytes): a gzip tar of incompressible bytes, ~300 kB."""
    rng = np.random.default_rng(0)
    payload = tar_gz({"tree/a.bin": rng.bytes(200_000), "tree/sub/b.bin": rng.bytes(100_000)})
    root = tmp_path / "www"
    root.mkdir()
    (root / NAME).write_bytes(payload)
    with FileServer(root) as server:
        yield server, payload


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verified_with_sha256_and_md5(served, tmp_path):
    server, payload = served
    dest = tmp_path / "data" / NAME
    out = fetch(server.url(NAME), dest, sha256=_sha(payload),
                md5=hashlib.md5(payload).hexdigest(), progress=False)
    assert out == dest and dest.read_bytes() == payload
    assert not dest.with_name(NAME + ".part").exists()
    assert server.requests == [(NAME, None)]


def test_cut_short_response_is_resumed_with_range(served, tmp_path):
    server, payload = served
    server.cut[NAME] = [100_000, 50_000]  # the first two responses stop early
    dest = tmp_path / NAME
    # attempts that make progress do not use up retries: retries=0 still completes
    fetch(server.url(NAME), dest, sha256=_sha(payload), retries=0, backoff=0, progress=False)
    assert dest.read_bytes() == payload
    assert server.requests == [(NAME, None), (NAME, "bytes=100000-"), (NAME, "bytes=150000-")]


def test_partial_file_from_an_earlier_run_is_continued(served, tmp_path):
    server, payload = served
    dest = tmp_path / NAME
    server.truncate[NAME] = 120_000  # the first run ends with 120 kB
    with pytest.raises(DataError, match="rerun to resume"):
        fetch(server.url(NAME), dest, sha256=_sha(payload), retries=0, progress=False)
    part = dest.with_name(NAME + ".part")
    assert part.stat().st_size == 120_000 and not dest.exists()
    del server.truncate[NAME]
    fetch(server.url(NAME), dest, sha256=_sha(payload), retries=0, progress=False)
    assert dest.read_bytes() == payload and not part.exists()
    assert server.requests[-1] == (NAME, "bytes=120000-")


def test_server_ignoring_range_restarts_from_zero(served, tmp_path):
    server, payload = served
    server.cut[NAME] = [50_000]
    server.ignore_range = True
    dest = tmp_path / NAME
    fetch(server.url(NAME), dest, sha256=_sha(payload), retries=1, backoff=0, progress=False)
    assert dest.read_bytes() == payload
    assert server.requests[1] == (NAME, "bytes=50000-")  # asked, got a 200 with everything


def test_permanently_truncated_transfer_gives_clear_error_and_no_dest(served, tmp_path):
    server, payload = served
    server.truncate[NAME] = 150_000
    dest = tmp_path / NAME
    with pytest.raises(DataError) as err:
        fetch(server.url(NAME), dest, sha256=_sha(payload), retries=2, backoff=0,
              progress=False)
    msg = str(err.value)
    assert server.url(NAME) in msg and f"150000 of {len(payload)} bytes" in msg
    assert "\n" not in msg
    assert not dest.exists()
    # one attempt that made progress, then 1 + 2 retries that added nothing
    assert server.hits(NAME) == 4


def test_wrong_checksum_deletes_the_download(served, tmp_path):
    server, payload = served
    dest = tmp_path / NAME
    with pytest.raises(DataError, match="different file") as err:
        fetch(server.url(NAME), dest, sha256=_sha(b"something else"), progress=False)
    assert server.url(NAME) in str(err.value)
    assert not dest.exists() and not dest.with_name(NAME + ".part").exists()


def test_present_good_file_is_not_downloaded_again(served, tmp_path):
    server, payload = served
    dest = tmp_path / NAME
    for _ in range(2):
        fetch(server.url(NAME), dest, md5=hashlib.md5(payload).hexdigest(), progress=False)
    assert server.hits(NAME) == 1


def test_present_bad_file_is_refused_not_overwritten(served, tmp_path):
    server, payload = served
    dest = tmp_path / NAME
    dest.write_bytes(b"not the archive")
    with pytest.raises(DataError, match="delete it and rerun"):
        fetch(server.url(NAME), dest, sha256=_sha(payload), progress=False)
    assert server.hits(NAME) == 0 and dest.read_bytes() == b"not the archive"


def _dead_url(name: str) -> str:
    """A URL on a local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{name}"


def test_unreachable_url_is_one_line_naming_url_and_place(tmp_path):
    url = _dead_url(NAME)
    dest = tmp_path / "data" / NAME
    with pytest.raises(DataError) as err:
        fetch(url, dest, retries=1, backoff=0, timeout=5, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "could not be reached" in msg
    assert url in msg and str(dest) in msg and "data_dir" in msg
    assert not dest.exists()


def test_obtain_falls_back_to_a_mirror_and_summarises_when_offline(served, tmp_path):
    server, payload = served
    archive = Archive(NAME, urls=(_dead_url(NAME), server.url(NAME)), sha256=_sha(payload))
    path = obtain(archive, tmp_path / "data", progress=False, retries=0)
    assert path.read_bytes() == payload and server.hits(NAME) == 1
    offline = Archive(NAME, urls=(_dead_url(NAME), _dead_url(NAME)))
    with pytest.raises(SourceUnreachable, match="none of its 2 sources could be reached") as err:
        obtain(offline, tmp_path / "elsewhere", progress=False, retries=0)
    assert "\n" not in str(err.value) and str(tmp_path / "elsewhere" / NAME) in str(err.value)


def test_http_404_is_not_retried(served, tmp_path):
    server, _ = served
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(server.url("nope.zip"), tmp_path / "nope.zip", retries=3, progress=False)
    assert server.hits("nope.zip") == 1


def test_local_path_and_file_url(tmp_path):
    src = tmp_path / "have" / NAME
    src.parent.mkdir()
    src.write_bytes(b"local archive bytes")
    a = fetch(str(src), tmp_path / "a" / NAME, sha256=_sha(b"local archive bytes"),
              progress=False)
    b = fetch(src.as_uri(), tmp_path / "b" / NAME, progress=False)
    assert a.read_bytes() == b.read_bytes() == b"local archive bytes"
    with pytest.raises(DataError, match="different file"):
        fetch(str(src), tmp_path / "c" / NAME, sha256=_sha(b"x"), progress=False)
    assert not (tmp_path / "c" / NAME).exists()


# -- extract ------------------------------------------------------------------------------------
def test_extract_tar_gz_and_zip_once(tmp_path):
    tgz = tmp_path / "t.tgz"
    tgz.write_bytes(tar_gz({"top/x.txt": b"x", "top/d/y.txt": b"y"}))
    out = tmp_path / "out"
    assert extract(tgz, out, progress=False) == out
    assert (out / "top/x.txt").read_bytes() == b"x" and (out / "top/d/y.txt").read_bytes() == b"y"
    assert extraction_marker(tgz, out).exists()
    (out / "top/x.txt").write_bytes(b"edited")  # a second call must not touch the tree
    extract(tgz, out, progress=False)
    assert (out / "top/x.txt").read_bytes() == b"edited"
    extract(tgz, out, progress=False, expect="top/missing")  # expected path absent: redo
    assert (out / "top/x.txt").read_bytes() == b"x"
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []

    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("DAVIS/a.txt", "a")
    extract(zpath, out, progress=False)
    assert (out / "DAVIS/a.txt").read_text() == "a" and (out / "top/x.txt").exists()


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_extract_refuses_path_traversal_in_tar(tmp_path, member):
    tgz = tmp_path / "bad.tar.gz"
    tgz.write_bytes(tar_gz({"fine.txt": b"ok", member: b"evil"}))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="path traversal"):
        extract(tgz, out, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (out / "fine.txt").exists()
    assert not extraction_marker(tgz, out).exists()


def test_extract_refuses_escaping_symlink_in_tar(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc"
        tar.addfile(link)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="points outside"):
        extract(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "link").exists()


def test_extract_refuses_path_traversal_in_zip(tmp_path):
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(DataError, match="path traversal"):
        extract(zpath, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_extract_corrupt_archive_is_a_data_error(tmp_path):
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(tar_gz({"a.bin": np.random.default_rng(1).bytes(50_000)})[:20_000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        extract(bad, tmp_path / "out", progress=False)


def test_place_file_links_or_copies(tmp_path):
    src = tmp_path / "src.jpg"
    src.write_bytes(b"jpeg")
    dst = tmp_path / "out" / "images" / "a.jpg"
    place_file(src, dst)
    place_file(src, dst)  # idempotent
    assert dst.read_bytes() == b"jpeg"
    with pytest.raises(DataError, match="missing"):
        place_file(tmp_path / "nope.jpg", dst)


def test_file_digests_stream_in_chunks(tmp_path):
    """One hashing implementation (patchlens.io) serves downloads and weights: several
    algorithms in one pass, equal to hashlib on the whole bytes whatever the chunk size."""
    data = np.random.default_rng(0).bytes(10_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    want = {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    assert digest(path, ("sha256", "md5"), chunk=999) == want
    assert sha256sum(path) == want["sha256"]
