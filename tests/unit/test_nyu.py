"""NYU Depth v2 recipe: a small file in the official format (HDF5, MATLAB's transposed arrays)
and splits.mat, converted directly and through the recipe from a local HTTP server."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import h5py
import numpy as np
import pytest
import scipy.io

from patchlens.data import recipes
from patchlens.data.dataset import Dataset
from patchlens.data.nyu import convert
from patchlens.errors import ConfigError, DataError

from helpers.http_server import FileServer

N, H, W = 7, 30, 40
TRAIN, TEST = [1, 3, 4, 6], [2, 5, 7]


def write_nyu(root, train=TRAIN, test=TEST):
    """(rgb (N, H, W, 3), depth (N, H, W)) written as MATLAB v7.3 stores them."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.5, (N, H, W)).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)          # (N, 3, W, H)
        f["depths"] = depth.transpose(0, 2, 1)            # (N, W, H)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array(train)[:, None],
                                           "testNdxs": np.array(test)[:, None]})
    return rgb, depth


def test_convert_keeps_orientation_split_and_millimetres(tmp_path):
    rgb, depth = write_nyu(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "out")
    ds = Dataset(tmp_path / "out")
    assert ds.split("train") == [f"nyu_{k:04d}" for k in TRAIN]
    assert ds.split("test") == [f"nyu_{k:04d}" for k in TEST]
    assert ds.has("depth") and not ds.has("semantic")
    for k in TRAIN + TEST:
        im = f"nyu_{k:04d}"
        np.testing.assert_array_equal(ds.load_image(im), rgb[k - 1])
        np.testing.assert_allclose(ds.load_depth(im), depth[k - 1], atol=5e-4 + 1e-6)
    convert(tmp_path / "src", tmp_path / "small", {"splits": ["test"], "max_images": 2})
    assert len(Dataset(tmp_path / "small").images) == 2


def test_bad_inputs_name_the_file(tmp_path):
    write_nyu(tmp_path / "src", test=[2, 99])
    with pytest.raises(DataError, match="splits.mat: image number 99"):
        convert(tmp_path / "src", tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown split"):
        convert(tmp_path / "src", tmp_path / "out", {"splits": ["val"]})
    (tmp_path / "src" / "nyu_depth_v2_labeled.mat").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="nyu_depth_v2_labeled.mat: not an HDF5"):
        convert(tmp_path / "src", tmp_path / "out", {"splits": ["train"]})
    (tmp_path / "src" / "splits.mat").unlink()
    with pytest.raises(DataError, match="splits.mat: missing"):
        convert(tmp_path / "src", tmp_path / "out")


def test_prepare_downloads_both_files_and_trusts_them_at_the_right_size(tmp_path, monkeypatch):
    write_nyu(tmp_path / "served")
    mat = tmp_path / "served" / "nyu_depth_v2_labeled.mat"
    recipe = recipes.RECIPES["nyu_depth_v2"]
    assert recipe.archive is None and all(f.sha256 is None for f in recipe.files)
    data_dir = tmp_path / "data"
    with FileServer(tmp_path / "served") as server:
        prefix = server.url("")
        # the recipe's size (the official file's) is not the test file's: nothing is trusted
        with pytest.raises(DataError, match="bytes, expected 2972037809.*deleted"):
            recipes.prepare("nyu_depth_v2", data_dir, tmp_path / "out",
                            {"url": prefix, "progress": False})
        assert not (data_dir / "nyu_depth_v2" / mat.name).exists()
        assert not (data_dir / "checksums.json").exists()
        files = tuple(dataclasses.replace(f, size=mat.stat().st_size) if f.size else f
                      for f in recipe.files)
        monkeypatch.setitem(recipes.RECIPES, "nyu_depth_v2",
                            dataclasses.replace(recipe, files=files))
        recipes.prepare("nyu_depth_v2", data_dir, tmp_path / "out",
                        {"url": prefix, "progress": False, "max_images": 2})
    ledger = json.loads((data_dir / "checksums.json").read_text())
    assert ledger == {f"nyu_depth_v2/{name}": hashlib.sha256(
        (tmp_path / "served" / name).read_bytes()).hexdigest()
        for name in ("nyu_depth_v2_labeled.mat", "splits.mat")}
    ds = Dataset(tmp_path / "out")
    assert len(ds.split("train")) == 2 and len(ds.split("test")) == 2
    # offline rerun: the files present are verified against the ledger and reused
    recipes.prepare("nyu_depth_v2", data_dir, tmp_path / "out2", {"progress": False})
    assert len(Dataset(tmp_path / "out2").images) == N
