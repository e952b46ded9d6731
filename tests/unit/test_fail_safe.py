"""Fault injection on the real write, download and read paths (issue 12): no corrupt file is ever
renamed into place or trusted, and every failure is one line naming the file and the fix."""
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers.mounts import mounted

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
    why = "mounting a small file system needs root (optional case of issue 12)"
    if os.geteuid() != 0:
        pytest.skip(why)
    with mounted(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], mnt, why):
        yield mnt


def test_real_full_disk_then_freed_renames_nothing(small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (700 << 10))

    def free_disk():
        filler.unlink(missing_ok=True)

    with pytest.raises(FeatureWriteError, match=r"\[Errno 28\] No space left on device"):
        _write(small_disk / "f.h5", n=16, C=512, on_error=free_disk)
    assert not filler.exists() and list(small_disk.iterdir()) == []


# -- one line per failure, in the rule's log (case 9); stale temporaries (case 11) --------------
class _Job:
    """What a Snakemake ``script:`` sees: ``snakemake.log`` and ``snakemake.output`` lists."""

    def __init__(self, tmp_path):
        self.log = [str(tmp_path / "rule.log")]
        self.output = [str(tmp_path / "out" / "f.h5")]


def _run(job, main):
    from patchlens.workflow import run

    with pytest.raises(SystemExit) as exit_:
        run(job, main)
    assert exit_.value.code == 1
    return Path(job.log[0]).read_text()


def test_unexpected_error_is_one_line_then_its_traceback_in_the_log(tmp_path, capfd):
    def main(_):
        raise OSError(28, "No space left on device")

    log = _run(_Job(tmp_path), main)
    first = log.splitlines()[0]
    assert first.endswith(f"ERROR patchlens: OSError: [Errno 28] No space left on device; "
                          f"traceback in {tmp_path / 'rule.log'}")
    assert "Traceback (most recent call last)" in log and "in main" in log
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].endswith(first.split("ERROR ", 1)[1])


def test_project_error_is_one_line_without_traceback(tmp_path, capfd):
    def main(_):
        raise DataError("data/x.png: mask 10x10 for a 96x96 image; re-prepare the data set")

    log = _run(_Job(tmp_path), main)
    assert log.count("\n") == 1 and "Traceback" not in log
    assert log.strip().endswith("ERROR patchlens: data/x.png: mask 10x10 for a 96x96 image; "
                                "re-prepare the data set")
    assert "mask 10x10" in capfd.readouterr().err


def test_rule_start_removes_temporaries_of_a_killed_run(tmp_path):
    from patchlens.io import atomic_path
    from patchlens.workflow import run

    job = _Job(tmp_path)
    out = Path(job.output[0])
    out.parent.mkdir()
    stale = [out.parent / ".f.h5.abc123.tmp", out.parent / ".f.h5.x.tmp"]
    keep = [out.parent / ".g.h5.abc123.tmp", out.parent / "f.h5.tmp"]  # another output's, not ours
    for p in stale + keep:
        p.write_bytes(b"partial")

    def main(sm):
        assert not any(p.exists() for p in stale)
        with atomic_path(sm.output[0]) as tmp:
            tmp.write_text("done")

    run(job, main)
    assert out.read_text() == "done" and all(p.exists() for p in keep)
    assert "removed" in Path(job.log[0]).read_text()


# -- file modes follow the umask (case 6) --------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    import pandas as pd

    from patchlens.io import write_csv, write_json

    old = os.umask(umask)
    try:
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
        write_json({"a": 1}, tmp_path / "t.json")
        _write(tmp_path / "f.h5", n=2)
        with open(tmp_path / "plain", "w"):  # what open() itself gives under this umask
            pass
    finally:
        os.umask(old)
    for name in ("t.csv", "t.json", "f.h5", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# -- downloads: trust on first use only after a complete extraction (cases 2 and 7) -------------
def _png(path, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def toy_recipe(tmp_path, monkeypatch):
    """(server, archive bytes): a recipe without published checksum (as SPair-71k) whose
    archive also carries a ``checksums.json`` and another data set's tree at its top level."""
    import json

    from helpers.archives import no_proxy, served_toy_recipe, tar_gz_of

    no_proxy(monkeypatch)
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(2):
            _png(src / "toy" / split / "cls" / f"{i}.png", i)
    (src / "toy" / "noise.bin").write_bytes(rng.bytes(300_000))  # so that a cut is mid-stream
    (src / "checksums.json").write_text(json.dumps({"VOCtrainval_11-May-2012.tar": "0" * 64}))
    _png(src / "VOCdevkit" / "hostile.png", 1)
    payload = tar_gz_of(src, ("toy", "checksums.json", "VOCdevkit"))
    with served_toy_recipe(monkeypatch, tmp_path, payload) as server:
        yield server, payload


def _prepare(tmp_path, out="out"):
    from patchlens.data import recipes

    recipes.prepare("toy", tmp_path / "data", tmp_path / out, {"progress": False})


def test_truncated_download_without_length_is_never_trusted(tmp_path, toy_recipe):
    import hashlib
    import json

    server, payload = toy_recipe
    server.send_length = False
    server.truncate["toy.tar.gz"] = len(payload) // 2  # looks complete: the close ends it
    data = tmp_path / "data"
    with pytest.raises(DataError, match=r"toy\.tar\.gz: corrupt or truncated archive \(.*\); no "
                       r"checksum is published for it, so nothing was recorded in .*checksums\.json "
                       r"and the download was deleted: rerun to download it again$"):
        _prepare(tmp_path)
    assert not (data / "toy.tar.gz").exists() and not (data / "checksums.json").exists()
    del server.truncate["toy.tar.gz"]  # the rerun gets the whole file and trusts that one
    _prepare(tmp_path)
    ledger = json.loads((data / "checksums.json").read_text())
    assert ledger == {"toy.tar.gz": hashlib.sha256(payload).hexdigest()}


def test_truncated_download_with_length_fails_and_records_nothing(tmp_path, toy_recipe):
    server, payload = toy_recipe
    server.truncate["toy.tar.gz"] = len(payload) // 2  # shorter than announced, every time
    from patchlens.data import recipes

    with pytest.raises(DataError, match=r"download incomplete after .* \(transfer stopped at "
                       rf"{len(payload) // 2} of {len(payload)} bytes\); the partial data is "
                       r"kept in .*toy\.tar\.gz\.part"):
        recipes.obtain(recipes.RECIPES["toy"].archive, tmp_path / "data", progress=False,
                       retries=1, backoff=0)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "toy.tar.gz.part", "toy.tar.gz.part.json"]  # the .part and the record of its source


def test_a_changed_source_names_the_ledger_entry_to_remove(tmp_path, toy_recipe):
    server, payload = toy_recipe
    _prepare(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "data" / "toy")
    (tmp_path / "data" / "toy.tar.gz").write_bytes(b"another file")
    with pytest.raises(DataError, match=r"remove its entry \"toy\.tar\.gz\" from that file"):
        _prepare(tmp_path, "out2")


def test_extraction_moves_only_the_recipes_tree(tmp_path, toy_recipe):
    import json

    data = tmp_path / "data"
    (data / "VOCdevkit" / "VOC2012").mkdir(parents=True)
    (data / "VOCdevkit" / "VOC2012" / "mine.txt").write_text("keep")
    (data / "checksums.json").write_text(json.dumps({"other.tar": "1" * 64}))
    _prepare(tmp_path)
    assert (data / "VOCdevkit" / "VOC2012" / "mine.txt").read_text() == "keep"
    assert not (data / "VOCdevkit" / "hostile.png").exists()
    ledger = json.loads((data / "checksums.json").read_text())
    assert ledger["other.tar"] == "1" * 64 and set(ledger) == {"other.tar", "toy.tar.gz"}
    assert (data / "toy" / "val" / "cls" / "0.png").exists()


# -- weights: the cache keyed by URL, verified before use, safe messages (cases 3 and 10) --------
TINY = {"timm": "vit_tiny_patch16_224", "pretrained": True,
        "kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}


class NotATensor:
    """A pickled object a weights_only load must refuse."""


def _checkpoint(path, seed, extra=None, **kwargs):
    import timm
    import torch

    torch.manual_seed(seed)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            **{**TINY["kwargs"], **kwargs})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": src.state_dict(), **(extra or {})}, path)
    return src


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    from helpers.archives import no_proxy
    from helpers.http_server import FileServer

    no_proxy(monkeypatch)
    www = tmp_path / "www"
    v1 = _checkpoint(www / "v1" / "checkpoint.pth", seed=1)
    v2 = _checkpoint(www / "v2" / "checkpoint.pth", seed=2)
    with FileServer(www) as server:
        yield server, v1, v2


def _build(tmp_path, url, **entry):
    from patchlens.models.resolve import build_timm, resolve_model

    return build_timm(resolve_model("m", {**TINY, "weights": url, **entry}), tmp_path / "w")


def _same(a, b) -> bool:
    import torch

    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_changing_the_weights_url_fetches_the_new_file(tmp_path, weights_server):
    server, v1, v2 = weights_server
    assert _same(_build(tmp_path, server.url("v1/checkpoint.pth")), v1)
    assert _same(_build(tmp_path, server.url("v2/checkpoint.pth")), v2)  # not the cached v1
    assert _same(_build(tmp_path, server.url("v1/checkpoint.pth")), v1)  # both stay cached
    assert server.hits("v1/checkpoint.pth") == 1 and server.hits("v2/checkpoint.pth") == 1


def test_a_damaged_cached_checkpoint_names_the_file_to_delete(tmp_path, weights_server):
    from patchlens.errors import WeightsError
    from patchlens.models.weights import cache_path

    server, v1, _ = weights_server
    url = server.url("v1/checkpoint.pth")
    _build(tmp_path, url)
    cached = cache_path({"key": "m", "weights": url}, tmp_path / "w")
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated on disk after the first use
    with pytest.raises(WeightsError, match=rf"cached weights {cached} changed since they were "
                       rf"first loaded .*delete {cached.parent} and rerun"):
        _build(tmp_path, url)


def test_a_truncated_first_download_is_not_loaded_and_named(tmp_path, weights_server):
    from patchlens.errors import WeightsError

    server, _, _ = weights_server
    server.send_length = False  # the transfer looks complete
    server.truncate["v1/checkpoint.pth"] = 5000
    with pytest.raises(WeightsError, match=r"not a readable checkpoint, truncated or corrupt .*"
                       r"; the download was removed from weights_dir: rerun to fetch it again"):
        _build(tmp_path, server.url("v1/checkpoint.pth"))


def test_pickled_code_is_refused_without_suggesting_unsafe_loading(tmp_path):
    from patchlens.errors import WeightsError

    path = tmp_path / "evil.pth"
    _checkpoint(path, seed=0, extra={"obj": NotATensor()})
    with pytest.raises(WeightsError) as err:
        _build(tmp_path, str(path))
    msg = str(err.value)
    assert "weights_only=False" not in msg and "\n" not in msg
    assert "never unpickles code; convert it to safetensors" in msg and "NotATensor" in msg


def test_shape_mismatch_and_corrupt_safetensors_are_one_line(tmp_path):
    from patchlens.errors import WeightsError

    path = tmp_path / "wide.pth"
    _checkpoint(path, seed=0, embed_dim=96)  # another width than the entry's 48
    with pytest.raises(WeightsError, match=r"model 'm': checkpoint does not fit "
                       r"'vit_tiny_patch16_224' \(size mismatch for .*\); fix 'timm:'"):
        _build(tmp_path, str(path))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match=r"bad\.safetensors: not a readable safetensors file"):
        _build(tmp_path, str(bad))


def test_unreachable_weights_name_weights_dir(tmp_path, monkeypatch):
    import patchlens.data.transfer as download
    from patchlens.errors import WeightsError

    monkeypatch.setattr(download.time, "sleep", lambda s: None)  # the retries' backoff

    with socket_closed() as port:
        with pytest.raises(WeightsError) as err:
            _build(tmp_path, f"http://127.0.0.1:{port}/ckpt.pth")
    msg = str(err.value)
    assert "(under weights_dir)" in msg and "data_dir" not in msg


def socket_closed():
    """A context giving a local port nothing listens on."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def ctx():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        yield port

    return ctx()


# -- masks: 8-bit index PNGs of their image's size, checked at preparation and read (case 5) -----
def _save_mask(path, array, mode=None):
    from PIL import Image

    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def test_wrong_size_and_16_bit_masks_are_refused_when_read(image_dataset):
    from patchlens.data.dataset import Dataset

    ds = Dataset(image_dataset)
    good = ds.load_semantic("im0")
    assert good.shape == (48, 64) and good.dtype == np.uint8 and set(np.unique(good)) == {0, 1}
    _save_mask(image_dataset / "im1_sem.png", np.ones((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"im1_sem\.png: mask is 10x10 \(HxW\) but its image is "
                       r"48x64; the data set at .* is inconsistent"):
        ds.load_semantic("im1")
    sixteen = np.full((48, 64), 300, np.uint16)  # would be clipped to 255 = void
    _save_mask(image_dataset / "im2_sem.png", sixteen)
    from PIL import Image

    assert Image.open(image_dataset / "im2_sem.png").mode == "I;16"
    with pytest.raises(DataError, match=r"im2_sem\.png: mode I;16 \(16-bit\) mask; expected an "
                                        r"8-bit index PNG"):
        ds.load_semantic("im2")


def test_oracle_on_a_wrong_size_mask_is_a_data_error_not_a_broadcast_error(image_dataset):
    from patchlens.data.dataset import Dataset
    from patchlens.models.oracle import oracle_tokens

    _save_mask(image_dataset / "im3_sem.png", np.ones((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"im3_sem\.png: mask is 10x10"):
        oracle_tokens(Dataset(image_dataset), ["im3"], (3, 4))


def test_preparation_refuses_a_mask_of_another_size_or_depth(tmp_path):
    from patchlens.data.layout import write_layout

    out = tmp_path / "ds"
    out.mkdir()
    rows = []
    for i, (mask, mode) in enumerate([(np.zeros((8, 6), np.uint8), "L"),
                                      (np.zeros((8, 6), np.uint8), "P")]):
        _save_mask(out / f"m{i}.png", mask, mode)
        rows.append(dict(image=f"im{i}", path=f"im{i}.png", semantic=f"m{i}.png", height=8,
                         width=6))
    write_layout(out, rows, ["bg"])  # grey and palette 8-bit masks of the right size pass
    _save_mask(out / "m1.png", np.zeros((6, 8), np.uint8))  # transposed
    with pytest.raises(DataError, match=r"m1\.png: mask is 6x8 \(HxW\) but its image is 8x6"):
        write_layout(out, rows, ["bg"])
    assert not (out / "manifest.csv").exists()
    _save_mask(out / "m1.png", np.zeros((8, 6), np.uint16))
    with pytest.raises(DataError, match=r"m1\.png: mode I.* mask; expected an 8-bit index PNG"):
        write_layout(out, rows, ["bg"])


# -- a log that cannot be written (issue 18 item 9): one line on stderr, then stderr alone ------
class _LogJob:
    def __init__(self, log, out):
        self.log, self.output = [str(log)], [str(out)]


@pytest.mark.parametrize("where", ["full", "not_a_dir"])
def test_unwritable_log_falls_back_to_stderr_in_one_line(tmp_path, capfd, where):
    """``/dev/full`` fails every write with ENOSPC (a full disk); a log under a regular file
    cannot be created at all (as a read-only directory, also for root)."""
    import logging

    from patchlens.workflow import run

    if where == "full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    (tmp_path / "file").write_text("")
    log = "/dev/full" if where == "full" else tmp_path / "file" / "rule.log"

    def main(_):
        for i in range(40):
            logging.getLogger("patchlens").info("progress %d", i)
        raise OSError(5, "Input/output error")

    with pytest.raises(SystemExit):
        run(_LogJob(log, tmp_path / "out" / "x.csv"), main)
    err = capfd.readouterr().err
    assert "Logging error" not in err and err.count("cannot write the log file") == 1
    reason = "No space left on device" if where == "full" else "Not a directory"
    assert f"cannot write the log file {log} (" in err and reason in err
    assert "progress 39" in err and "OSError: [Errno 5] Input/output error" in err
    assert "traceback in" not in err and "Traceback (most recent call last)" in err
