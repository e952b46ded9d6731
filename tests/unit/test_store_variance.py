import numpy as np
import pytest
import xarray as xr

from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore, FeatureWriter, write_features
from patchlens.features.channel_stats import VarianceStats, channel_stats, write_stats
from patchlens.features.variants import apply_variant, parse_variant


def _store(tmp_path, n=7, L=3, grid=(2, 3), C=5, seed=0, scale=None):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, L, grid[0] * grid[1], C)).astype(np.float32)
    if scale is not None:
        t *= scale
    images = [f"im{i}" for i in range(n)]
    path = tmp_path / "f.h5"
    write_features(path, t, images, grid, {"model": "m", "patch_size": 16},
                   cls=t[:, :, 0], layers=[0, 2, 5])
    return path, t.astype(np.float16).astype(np.float32), images


def test_layout_is_xarray_readable_with_named_dims(tmp_path):
    path, t, images = _store(tmp_path)
    ds = xr.open_dataset(path, engine="h5netcdf")
    assert ds["tokens"].dims == ("image", "layer", "patch", "channel")
    assert ds["cls"].dims == ("image", "layer", "channel")
    assert list(ds["image"].values) == images and list(ds["layer"].values) == [0, 2, 5]
    np.testing.assert_array_equal(ds["tokens"].sel(layer=2).values, t[:, 1])
    assert ds.attrs["model"] == "m"


def test_store_reads_layers_and_image_subsets_in_asked_order(tmp_path):
    path, t, images = _store(tmp_path)
    with FeatureStore(path) as s:
        assert s.layers == [0, 2, 5] and s.grid == (2, 3) and s.attrs["patch_size"] == 16
        x = s.tokens(5, ["im6", "im0", "im3"])
        np.testing.assert_array_equal(x, t[[6, 0, 3], 2].reshape(3, 2, 3, 5))
        np.testing.assert_array_equal(s.cls(0, ["im1"]), t[[1], 0, 0])
        with pytest.raises(DataError, match="layer 4 not extracted"):
            s.tokens(4)
        with pytest.raises(DataError, match="'nope' not in the feature file"):
            s.tokens(0, ["nope"])


def test_interrupted_write_leaves_no_file(tmp_path):
    path = tmp_path / "f.h5"
    with pytest.raises(RuntimeError, match="wrote 1 of 2"):
        with FeatureWriter(path, ["a", "b"], [0], (1, 1), 2, False, {}) as w:
            w.write(np.zeros((1, 1, 1, 2)))
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        with FeatureWriter(path, ["a"], [0], (1, 1), 2, False, {}) as w:
            w.write(np.zeros((1, 1, 1, 3)))  # wrong channel count
    assert list(tmp_path.iterdir()) == []


def test_streaming_channel_stats_match_numpy(tmp_path):
    path, t, images = _store(tmp_path, n=9, scale=np.arange(1, 6))
    subset = images[1:8]
    with FeatureStore(path) as s:
        mean, var, n = channel_stats(s, subset, batch=2)  # several merges
    ref = t[1:8].transpose(1, 0, 2, 3).reshape(3, -1, 5)
    np.testing.assert_allclose(mean, ref.mean(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, ref.var(1), rtol=1e-5)
    assert n == 7 * 6
    write_stats(tmp_path / "v.h5", [0, 2, 5], mean, var, {"split": "train"})
    v = VarianceStats(tmp_path / "v.h5")
    np.testing.assert_allclose(v.var(2), var[1])
    assert xr.open_dataset(tmp_path / "v.h5", engine="h5netcdf")["var"].dims == ("layer", "channel")


def test_variants_drop_largest_variance_channels_and_zscore():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)) * np.array([1.0, 10.0, 0.5, 3.0]) + 7
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_array_equal(apply_variant(x, "drop1", mean, var), x[:, [0, 2, 3]])
    np.testing.assert_array_equal(apply_variant(x, "drop2", mean, var), x[:, [0, 2]])
    z = apply_variant(x, "zscore", mean, var)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)  # eps=1e-6 in the denominator
    assert apply_variant(x, "raw") is x
    assert parse_variant("drop12") == ("drop", 12)
    with pytest.raises(ConfigError, match="drop<m>"):
        parse_variant("dropx")
    with pytest.raises(ConfigError, match="cannot drop 4 of 4"):
        apply_variant(x, "drop4", mean, var)
