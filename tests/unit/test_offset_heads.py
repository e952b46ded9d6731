"""Offset local heads on constructed attention maps."""
import numpy as np
import pytest
import xarray as xr

from patchlens.analysis.attention_stats import AttentionAccumulator
from patchlens.analysis.offset_heads import find_offset_heads
from patchlens.errors import ConfigError
from attention_maps import shift_rows

K = 5
P = K * K


def _centred(head_rows):
    """Run constructed heads through the real accumulator (1 prefix token with 20 % mass)."""
    H = len(head_rows)
    a = np.zeros((1, H, 1 + P, 1 + P), np.float32)
    a[:, :, 0, :] = 1 / (1 + P)
    for h, r in enumerate(head_rows):
        a[0, h, 1:, 0] = 0.2
        a[0, h, 1:, 1:] = 0.8 * r
    acc = AttentionAccumulator([3], (K, K), 16, 1)
    acc.add(3, a)
    return acc.result()["centred"]


def _canvas(cells, r=2):
    """A (dy, dx) map with the given {(dy, dx): mass}, the rest spread evenly."""
    n = 2 * r + 1
    m = np.full((n, n), (1 - sum(cells.values())) / (n * n - len(cells)))
    for (dy, dx), v in cells.items():
        m[dy + r, dx + r] = v
    return xr.DataArray(m[None, None], dims=("layer", "head", "dy", "dx"),
                        coords={"layer": [0], "head": [0], "dy": np.arange(-r, r + 1),
                                "dx": np.arange(-r, r + 1)})


def test_shift_heads_are_flagged_with_their_direction_and_self_is_not():
    heads = [shift_rows(K, 0, 1), np.eye(P), shift_rows(K, -1, 0), shift_rows(K, 1, 1),
             shift_rows(K, 0, 2)]
    df = find_offset_heads(_centred(heads))
    assert list(df.layer) == [3] * 5 and list(df["head"]) == [0, 1, 2, 3, 4]
    assert list(df.direction) == ["right", "self", "up", "down-right", "far"]
    assert list(df.flagged) == [True, False, True, False, False]
    right = df.iloc[0]
    assert (right.dy, right.dx) == (0, 1)
    # 4 of 5 columns can look right, the last column falls back on its left neighbour
    assert right.strength == pytest.approx((K - 1) / K, rel=1e-6)
    assert right.centre_share == pytest.approx(0.0, abs=1e-9)
    assert df.iloc[1].strength == pytest.approx(1.0, rel=1e-6)
    diag = find_offset_heads(_centred(heads), {"diagonals": True})
    assert list(diag.flagged) == [True, False, True, True, False]


def test_thresholds_share_and_ratio():
    assert find_offset_heads(_canvas({(0, 1): 0.35, (0, 0): 0.1})).flagged.item()
    # too little mass on the neighbour
    assert not find_offset_heads(_canvas({(0, 1): 0.25, (0, 0): 0.05})).flagged.item()
    # enough mass, but not twice the centre: a local blob leaning right
    weak = find_offset_heads(_canvas({(0, 1): 0.35, (0, 0): 0.3}))
    assert weak.direction.item() == "right" and not weak.flagged.item()
    lenient = find_offset_heads(_canvas({(0, 1): 0.35, (0, 0): 0.3}), {"min_ratio": 1.1})
    assert lenient.flagged.item()
    # share is relative to the map: a cropped map that sums to 0.5 doubles every share
    half = _canvas({(0, -1): 0.2, (0, 0): 0.05}) * 0.5
    row = find_offset_heads(half)
    assert row.direction.item() == "left" and row.strength.item() == pytest.approx(0.2)


def test_model_dimension_and_attribute():
    c = xr.concat([_canvas({(0, 1): 0.6}), _canvas({(1, 0): 0.6})], dim="model")
    c = c.assign_coords(model=["a", "b"])
    df = find_offset_heads(c)
    assert list(df.columns[:3]) == ["model", "layer", "head"]
    assert list(zip(df.model, df.direction)) == [("a", "right"), ("b", "down")]
    one = _canvas({(0, 1): 0.6})
    one.attrs["model"] = "m"
    assert find_offset_heads(one).model.item() == "m"
    # a whole attention Dataset carries the model attribute
    ds = xr.Dataset({"centred": _canvas({(-1, 0): 0.6})}, attrs={"model": "ds"})
    row = find_offset_heads(ds)
    assert (row.model.item(), row.direction.item(), row.flagged.item()) == ("ds", "up", True)
    # models with different grids: concat pads the smaller canvas with NaN
    mixed = xr.concat([_canvas({(0, 1): 0.6}, r=2), _canvas({(0, -1): 0.6}, r=1)], dim="model",
                      join="outer")
    mixed = mixed.assign_coords(model=["big", "small"])
    assert bool(mixed.isnull().any())
    df = find_offset_heads(mixed)
    assert list(df.direction) == ["right", "left"] and df.flagged.all()


def test_bad_params_and_canvas():
    with pytest.raises(ConfigError, match="min_share"):
        find_offset_heads(_canvas({}), {"min_share": 0})
    with pytest.raises(ConfigError, match="unknown"):
        find_offset_heads(_canvas({}), {"min_sahre": 0.3})
    with pytest.raises(ConfigError, match="centre"):
        find_offset_heads(_canvas({}).isel(dy=slice(0, 2)))
