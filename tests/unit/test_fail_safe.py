"""Fault injection on the real write, download and read paths (issue 12): no corrupt file is ever
renamed into place or trusted, and every failure is one line naming the file and the fix."""
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from patchlens.errors import DataError
from patchlens.features.store import FeatureStore, FeatureWriteError, FeatureWriter


def _tokens(i, L=2, P=16, C=64):
    """Batch of one image whose every value is i + 1 (a zeroed chunk can never match it)."""
    return np.full((1, L, P, C), i + 1, np.float32), np.full((1, L, C), -(i + 1), np.float32)


def _write(path, n=8, C=64, on_error=None):
    images = [f"im{i}" for i in range(n)]
    with FeatureWriter(path, images, [0, 1], (4, 4), C, True, {"model": "m"}) as w:
        for i in range(n):
            tok, cls = _tokens(i, C=C)
            try:
                w.write(tok, cls)
            except FeatureWriteError:
                if on_error is None:
                    raise
                on_error()  # a caller that swallows the error must still get no file
    return images


def _only(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.fixture
def failing_setitem(monkeypatch):
    """Make the h5py dataset write raise OSError(ENOSPC) from the ``at``-th call on."""
    real = h5py.Dataset.__setitem__
    state = {"calls": 0, "at": None, "silent": False}

    def setitem(self, key, value):
        state["calls"] += 1
        if state["at"] is not None and state["calls"] >= state["at"]:
            if state["silent"]:  # what HDF5 does when the error surfaces in an ignored flush
                return None
            raise OSError(28, "No space left on device")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    return state


def test_write_error_mid_file_is_fatal_and_leaves_nothing(tmp_path, failing_setitem):
    failing_setitem["at"] = 5  # third image's tokens (tokens + cls per image)
    with pytest.raises(FeatureWriteError, match=r"f\.h5: writing the feature file failed "
                       r"\(\[Errno 28\] No space left on device\); nothing was kept"):
        _write(tmp_path / "f.h5")
    assert _only(tmp_path) == []  # no file, no temporary


def test_swallowed_write_error_still_renames_nothing(tmp_path, failing_setitem):
    failing_setitem["at"] = 5
    swallowed = []

    def stop_failing():
        swallowed.append(1)
        failing_setitem["at"] = None  # "disk freed": later writes would succeed

    with pytest.raises(FeatureWriteError, match="nothing was kept"):
        _write(tmp_path / "f.h5", on_error=stop_failing)
    assert swallowed and _only(tmp_path) == []


def test_silently_lost_chunks_are_found_by_the_read_back(tmp_path, failing_setitem):
    failing_setitem.update(at=7, silent=True)  # images 3.. never reach the file: zeros
    with pytest.raises(FeatureWriteError, match="reads back different from what was written"):
        _write(tmp_path / "f.h5")
    assert _only(tmp_path) == []


def test_clean_write_reads_back_every_value(tmp_path):
    images = _write(tmp_path / "f.h5")
    with FeatureStore(tmp_path / "f.h5") as s:
        for layer in (0, 1):
            got = s.tokens(layer)
            assert got.shape == (8, 4, 4, 64)
            np.testing.assert_array_equal(got.reshape(8, -1).mean(1), np.arange(1, 9))
        assert s.images == images


def test_reader_refuses_a_file_with_fewer_token_rows_than_images(tmp_path):
    path = tmp_path / "f.h5"
    _write(path)
    with h5py.File(path, "a") as f:  # a truncated copy: the tokens lost their last rows
        data = f["tokens"][:4]
        del f["tokens"]
        f.create_dataset("tokens", data=data)
    with pytest.raises(DataError, match=r"4 token rows for 8 images; delete it and rerun"):
        FeatureStore(path)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs), where the test may mount one (root, Linux)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a small file system needs root (optional case of issue 12)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_then_freed_renames_nothing(small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (700 << 10))

    def free_disk():
        filler.unlink(missing_ok=True)

    with pytest.raises(FeatureWriteError, match=r"\[Errno 28\] No space left on device"):
        _write(small_disk / "f.h5", n=16, C=512, on_error=free_disk)
    assert not filler.exists() and list(small_disk.iterdir()) == []
