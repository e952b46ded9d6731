"""Issue 18, cases 6-8: the checkpoint cache under concurrent jobs, a read-only shared
weights_dir, and a download that does not load."""
from __future__ import annotations

import contextlib
import os
import threading

import pytest
from helpers.archives import no_proxy
from helpers.http_server import FileServer
from helpers.mounts import mounted

from patchlens.errors import WeightsError
from patchlens.io import sha256sum
from patchlens.models.weights import RECORDS, cache_path, local_checkpoint

TINY = {"timm": "vit_tiny_patch16_224", "pretrained": True,
        "kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}
CKPT = "v1/checkpoint.pth"


def _checkpoint(path, seed=1):
    import timm
    import torch

    torch.manual_seed(seed)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            **TINY["kwargs"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": src.state_dict()}, path)
    return src


def _build(url, weights_dir):
    from patchlens.models.resolve import build_timm, resolve_model

    return build_timm(resolve_model("m", {**TINY, "weights": url}), weights_dir)


def _same(a, b) -> bool:
    import torch

    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.fixture
def served(tmp_path, monkeypatch):
    no_proxy(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the workflow's working directory (results/ lives here)
    www = tmp_path / "www"
    model = _checkpoint(www / CKPT)
    with FileServer(www) as server:
        yield server, model, (www / CKPT).read_bytes()


def test_two_jobs_downloading_one_checkpoint_take_turns(tmp_path, served):
    server, _, payload = served
    server.delay = 0.5  # both jobs are mid-download at once without the lock
    spec = {"key": "m", "weights": server.url(CKPT)}
    got, errors = [], []

    def job():
        try:
            got.append(local_checkpoint(spec, tmp_path / "w"))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    dest = cache_path(spec, tmp_path / "w")
    assert got == [dest, dest] and dest.read_bytes() == payload
    assert server.hits(CKPT) == 1  # the second job found the first one's file


def test_truncated_download_without_length_is_removed_and_fetched_again(tmp_path, served):
    server, model, _ = served
    server.send_length = False  # the cut transfer looks complete
    server.truncate[CKPT] = 5000
    url = server.url(CKPT)
    dest = cache_path({"key": "m", "weights": url}, tmp_path / "w")
    with pytest.raises(WeightsError, match=r"not a readable checkpoint, truncated or corrupt .*"
                       r"the download was removed from weights_dir: rerun to fetch it again"):
        _build(url, tmp_path / "w")
    assert not dest.exists() and not dest.with_name(dest.name + ".sha256").exists()
    del server.truncate[CKPT]
    assert _same(_build(url, tmp_path / "w"), model)  # the rerun downloads it again
    assert server.hits(CKPT) == 2
    assert dest.with_name(dest.name + ".sha256").read_text().strip() == sha256sum(dest)


@contextlib.contextmanager
def _read_only(src, view):
    """``view``: a read-only view of directory ``src`` (a read-only bind mount as root, where
    permissions do not bind; else the permission bits), changes to ``src`` show through."""
    view.mkdir()
    if os.geteuid() == 0:
        with mounted(["--bind", "-o", "ro", str(src)], view,
                     "root without mount rights: a read-only directory cannot be made"):
            yield view
    else:
        view.rmdir()
        view.symlink_to(src, target_is_directory=True)
        modes = {p: p.stat().st_mode for p in [src, *src.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield view
        finally:
            for p, m in modes.items():
                p.chmod(m)


def test_read_only_weights_dir_records_the_digest_under_results(tmp_path, served):
    server, model, payload = served
    url = server.url(CKPT)
    shared = tmp_path / "shared"
    placed = cache_path({"key": "m", "weights": url}, shared)  # where the error says to put it
    placed.parent.mkdir(parents=True)
    placed.write_bytes(payload)
    with _read_only(shared, tmp_path / "ro") as ro:
        dest = cache_path({"key": "m", "weights": url}, ro)
        with pytest.raises(OSError):
            dest.with_name("probe").write_text("x")  # really read-only
        assert _same(_build(url, ro), model)
        record = tmp_path / RECORDS / dest.relative_to(ro).with_name(dest.name + ".sha256")
        assert record.read_text().strip() == sha256sum(dest) == sha256sum(placed)
        assert _same(_build(url, ro), model)  # verified against that record, still works
        placed.write_bytes(payload[:-10] + b"0123456789")  # the shared copy changes
        with pytest.raises(WeightsError, match=r"changed since they were first loaded "
                           rf"\(sha256 differs from {record.relative_to(tmp_path)}\)"):
            _build(url, ro)
    assert server.hits(CKPT) == 0
