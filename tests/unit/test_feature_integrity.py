"""Feature files (issue 18 items 4, 5, 9; issue 20 item 4): channel moments accumulated while
writing equal the two-pass statistics, flipped bytes fail the read naming the file, non-finite
tokens are refused, and a disk that fills up mid-write ends in one line, no file and no crash."""
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from patchlens.data.dataset import Dataset
from patchlens.errors import DataError
from patchlens.features.channel_stats import (VarianceStats, channel_stats, split_stats,
                                              write_stats)
from patchlens.features.store import FeatureStore, FeatureWriter

SPLITS = ["train", "val", "train", "test", "val", "train", "train", "val", "test"]


def _tokens(n=9, L=3, P=6, C=5, seed=0):
    """Tokens with an MAE-like channel (mean 300, spread 2) next to centred ones."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, L, P, C)) * np.array([1.0, 8.0, 0.5, 2.0, 3.0])
    t[..., 3] += 300.0
    return t.astype(np.float16)


def _write(path, tokens, groups=SPLITS, batch=2, attrs=None):
    images = [f"im{i}" for i in range(len(tokens))]
    with FeatureWriter(path, images, [0, 4, 7], (2, 3), tokens.shape[-1], True,
                       attrs or {"model": "m", "dataset": "d"}, groups=groups) as w:
        for i in range(0, len(tokens), batch):  # several batches, splits mixed within them
            w.write(tokens[i:i + batch], tokens[i:i + batch, :, 0])
    return images


@pytest.mark.parametrize("splits", [["train"], ["val"], ["train", "test"],
                                    ["test", "val", "train"], ["val", "nosuch"]])
def test_stored_moments_equal_the_two_pass_statistics(tmp_path, splits):
    t = _tokens()
    images = _write(tmp_path / "f.h5", t)
    chosen = [im for im, s in zip(images, SPLITS) if s in splits]
    with FeatureStore(tmp_path / "f.h5") as s:
        mean, var, n = split_stats(s, splits, chosen)
        ref_mean, ref_var, ref_n = channel_stats(s, chosen, batch=3)  # today's two passes
    assert n == ref_n == len(chosen) * 6
    np.testing.assert_allclose(var, ref_var, rtol=1e-6)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-9)
    # and an independent computation on the stored float16 values
    x = t[[images.index(im) for im in chosen]].astype(np.float64)
    x = x.transpose(1, 0, 2, 3).reshape(3, -1, 5)
    np.testing.assert_allclose(var, x.var(1), rtol=1e-9)
    np.testing.assert_allclose(mean, x.mean(1), rtol=1e-12, atol=1e-12)


def test_variance_file_from_moments_equals_todays(tmp_path):
    t = _tokens(seed=3)
    images = _write(tmp_path / "f.h5", t, batch=4)
    train = [im for im, s in zip(images, SPLITS) if s == "train"]
    with FeatureStore(tmp_path / "f.h5") as s:
        for name, (mean, var, _) in {"new": split_stats(s, ["train"], train),
                                     "old": channel_stats(s, train)}.items():
            write_stats(tmp_path / f"{name}.h5", s.layers, mean, var, {"split": "train"})
    new, old = VarianceStats(tmp_path / "new.h5"), VarianceStats(tmp_path / "old.h5")
    assert new.layers == old.layers == [0, 4, 7]
    for layer in new.layers:
        np.testing.assert_allclose(new.var(layer), old.var(layer), rtol=1e-6)
        np.testing.assert_allclose(new.mean(layer), old.mean(layer), rtol=1e-6, atol=1e-9)


def test_moments_refuse_a_manifest_that_changed_since_extraction(tmp_path):
    images = _write(tmp_path / "f.h5", _tokens())
    with FeatureStore(tmp_path / "f.h5") as s:
        with pytest.raises(DataError, match="data set changed since extraction"):
            split_stats(s, ["train"], images[:2])
        with pytest.raises(DataError, match="check variance.split"):
            split_stats(s, ["nosuch"], [])


def _flip(path, dataset, index=0, nbytes=1):
    """Flip ``nbytes`` bytes in the middle of chunk ``index`` of ``dataset`` (on disk)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(index)
    with open(path, "r+b") as fh:
        for k in range(nbytes):
            fh.seek(info.byte_offset + info.size // 2 + k)
            b = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([b[0] ^ 0x5A]))


def test_flipped_bytes_in_a_feature_file_fail_the_read_naming_it(tmp_path):
    path = tmp_path / "f.h5"
    _write(path, _tokens())
    _flip(path, "tokens", index=4, nbytes=8)  # image 1, layer 4
    with FeatureStore(path) as s:
        np.testing.assert_array_equal(s.tokens(0, ["im0"]).shape, (1, 2, 3, 5))  # intact chunk
        with pytest.raises(DataError, match=rf"{path}: stored data fail their checksum.*"
                                            "rerun the extraction rule"):
            s.tokens(4)
        with pytest.raises(DataError, match=str(path)):  # the evaluator's whole-layer read
            s._f["tokens"][:, 1]


def test_flipped_byte_in_stored_moments_or_variance_file_fails(tmp_path):
    path = tmp_path / "f.h5"
    images = _write(path, _tokens())
    _flip(path, "stats_m2")
    with FeatureStore(path) as s, pytest.raises(DataError, match=str(path)):
        split_stats(s, ["train"], [im for im, g in zip(images, SPLITS) if g == "train"])
    v = tmp_path / "v.h5"
    write_stats(v, [0], np.ones((1, 4000)), np.ones((1, 4000)), {})
    _flip(v, "var")
    with pytest.raises(DataError, match=rf"{v}.*rerun the channel_variance rule"):
        VarianceStats(v)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_writer_refuses_non_finite_tokens_naming_model_dataset_layer(tmp_path, bad):
    t = _tokens()
    t[5, 1, 2, 0] = float(bad)
    with pytest.raises(DataError, match=r"model 'm' gives non-finite tokens \(inf/NaN\) on "
                                        r"data set 'd' at layer 4; nothing was kept"):
        _write(tmp_path / "f.h5", t)
    assert list(tmp_path.iterdir()) == []


TINY = {"timm": "vit_tiny_patch16_224", "pretrained": False,
        "kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3}}


def test_extractor_refuses_nan_weights_and_zero_std(tmp_path, image_dataset, monkeypatch):
    import torch

    from patchlens.features import extract as E
    from patchlens.models.resolve import resolve_model

    ds = Dataset(image_dataset)
    spec = resolve_model("tiny", TINY)
    with pytest.raises(DataError, match=r"model 'tiny' gives non-finite tokens \(inf/NaN\) on "
                                        r"data set 'ds' at layer 0"):
        E.extract({**spec, "std": [0.0, 0.0, 0.0]}, ds, tmp_path / "out" / "z.h5", [48, 64],
                  batch_size=3, progress=False)
    build = E.build_model

    def nan_model(*args):
        model = build(*args)
        with torch.no_grad():
            model.blocks[1].mlp.fc2.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(E, "build_model", nan_model)
    with pytest.raises(DataError, match=r"model 'tiny' gives non-finite .* at layer 1;"):
        E.extract(spec, ds, tmp_path / "out" / "n.h5", [48, 64], batch_size=3, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


# -- disk full (issue 18 item 9): in a child process, so that a crash shows as a signal --------
CHILD = textwrap.dedent("""
    import errno, sys
    import numpy as np
    from patchlens.features import h5safe
    from patchlens.features.store import FeatureWriter

    budget = int(sys.argv[2])

    class Full(h5safe.SinkOnFailure):  # the file system runs out of space after `budget` bytes
        def __init__(self, path):
            super().__init__(path)
            real, self.used = self._f, 0

            class F:
                def __getattr__(_, name):
                    return getattr(real, name)

                def write(_, b):
                    if self.used + len(memoryview(b)) > budget:
                        raise OSError(errno.ENOSPC, "No space left on device")
                    self.used += len(memoryview(b))
                    return real.write(b)
            self._f = F()

    h5safe.SinkOnFailure = Full
    import patchlens.features.store as S
    S.SinkOnFailure = Full
    imgs = [f"i{i}" for i in range(32)]
    try:
        with FeatureWriter(sys.argv[1], imgs, [0, 1, 2], (8, 8), 96, True, {"model": "m"}) as w:
            for i in range(0, 32, 4):
                w.write(np.ones((4, 3, 64, 96), np.float16), np.ones((4, 3, 96), np.float16))
    except Exception as exc:
        print(type(exc).__name__, exc)
""")


@pytest.mark.parametrize("budget", [3000, 200_000, 1_000_000, 1_236_000, 1_241_000])
def test_disk_full_mid_write_closes_the_file_without_a_crash(tmp_path, budget):
    """Budgets: while creating the file, mid-tokens, near the end, and while the statistics and
    HDF5's metadata are written at close (the whole file is 1.24 MB)."""
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", CHILD, str(out / "f.h5"), str(budget)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]  # not -11 (SIGSEGV) / -6 (abort)
    assert res.stdout.strip() == (
        f"FeatureWriteError {out / 'f.h5'}: writing the feature file failed ([Errno 28] No "
        "space left on device); nothing was kept -- free disk space or fix the file system, "
        "then rerun the extraction rule")
    assert list(out.iterdir()) == []


def test_device_sums_equal_the_writers_numpy_sums():
    """The sums the extractor computes with torch where the tokens are (GPU), run here on the
    CPU, equal numpy's on the float16 tokens it returns."""
    import torch

    from patchlens.features.extract import forward_batch
    from patchlens.features.moments import row_sums
    from patchlens.models.resolve import build_timm, resolve_model

    torch.manual_seed(0)
    model = build_timm(resolve_model("tiny", TINY))
    with torch.inference_mode():
        tok, cls, (s, q) = forward_batch(model, torch.randn(3, 3, 48, 64), [0, 2], True,
                                         norm=True, sums=True)
        assert forward_batch(model, torch.randn(1, 3, 48, 64), [0], True)[2] is None  # CPU
    ref_s, ref_q = row_sums(tok)
    assert s.shape == (3, 3, 48)
    np.testing.assert_allclose(s, ref_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(q, ref_q, rtol=1e-12)


def test_file_without_stored_moments_falls_back_to_reading_tokens(tmp_path):
    """A feature file written before the moments were stored: split_stats says so (None) and
    the channel_variance rule computes the two-pass statistics from the tokens instead."""
    path = tmp_path / "f.h5"
    images = _write(path, _tokens())
    with h5py.File(path, "a") as f:
        for name in ("stats_count", "stats_mean", "stats_m2", "image_split", "split"):
            del f[name]
    with FeatureStore(path) as s:
        assert s.split_moments() is None and split_stats(s, ["train"], images) is None
