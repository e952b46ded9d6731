"""Offset local heads on constructed attention maps."""
import numpy as np
import pytest
import xarray as xr

from patchlens.analysis.attention_stats import AttentionAccumulator
from patchlens.analysis.offset_heads import find_offset_heads
from patchlens.errors import ConfigError
from helpers.attention_maps import shift_rows

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


def _reference_offset(canvas: np.ndarray) -> tuple[float, float]:
    """Walmer et al.'s average_att_offset on one (2K-1) x (2K-1) map: templates
    v_i = 2 i / (nt - 1) - 1 along x (columns) and y (rows), centroid of the normalised map."""
    nt = canvas.shape[0]
    v = 2 * np.arange(nt) / (nt - 1) - 1
    att = canvas / canvas.sum()
    return float((att * v[None, :]).sum()), float((att * v[:, None]).sum())


def test_average_offset_of_shift_heads_matches_the_reference_formula():
    from patchlens.analysis.offset_heads import average_offset

    heads = [shift_rows(K, 0, 1), np.eye(P), shift_rows(K, -1, 0), shift_rows(K, 1, 1),
             np.full((P, P), 1 / P)]
    cen = _centred(heads)
    off = average_offset(cen, (K, K))
    # right shift: (K-1)/K of the queries look one patch right, the last column one patch left
    x_right = ((K - 1) / K - 1 / K) / (K - 1)
    np.testing.assert_allclose(off["offset_x"].sel(layer=3).values[0], x_right, atol=1e-9)
    np.testing.assert_allclose(off["avg_offset"].sel(layer=3).values[[0, 1, 2, 4]],
                               [x_right, 0, x_right, 0], atol=1e-9)
    assert off["offset_y"].sel(layer=3).values[2] == pytest.approx(-x_right)    # up = -y
    for h in range(len(heads)):
        cx, cy = _reference_offset(cen.sel(layer=3, head=h).values)
        assert off["offset_x"].sel(layer=3, head=h) == pytest.approx(cx, abs=1e-9)
        assert off["offset_y"].sel(layer=3, head=h) == pytest.approx(cy, abs=1e-9)


def test_pure_shift_by_one_has_offset_one_over_grid_side():
    """All mass one patch right on a K x K canvas: (1 / (K - 1), 0), length 1 / (K - 1); the same
    canvas cropped to radius 1 gives the same centroid (units follow the grid, not the crop)."""
    from patchlens.analysis.offset_heads import average_offset

    full = _canvas({(0, 1): 1.0}, r=K - 1).where(lambda m: m > 1e-12, 0.0)
    crop = full.sel(dy=slice(-1, 1), dx=slice(-1, 1))
    for m in (full, crop):
        off = average_offset(m, (K, K))
        assert float(off["avg_offset"][0, 0]) == pytest.approx(1 / (K - 1))
        assert float(off["offset_y"][0, 0]) == pytest.approx(0.0)
    # non-square grid: x and y normalised by their own side
    down = _canvas({(1, 0): 1.0}, r=2).where(lambda m: m > 1e-12, 0.0)
    assert float(average_offset(down, (3, 9))["offset_y"][0, 0]) == pytest.approx(1 / 2)


def test_offset_table_rows_in_the_attention_table_format():
    from patchlens.analysis.attention_stats import attention_table
    from patchlens.analysis.offset_heads import OFFSET_METRICS, offset_table

    H = 2
    a = np.zeros((1, H, 1 + P, 1 + P), np.float32)
    a[0, 0, 1:, 1:] = shift_rows(K, 0, 1)
    a[0, 1, 1:, 1:] = np.eye(P)
    acc = AttentionAccumulator([0], (K, K), 16, 1)
    acc.add(0, a)
    ds = acc.result()
    t = offset_table(ds, "m", "d")
    assert list(t.columns) == list(attention_table(ds, "m", "d").columns)
    assert set(t.metric) == set(OFFSET_METRICS) and len(t) == 3 * H
    v = t.set_index(["metric", "head"]).value
    assert v["avg_offset", 0] == pytest.approx(((K - 1) / K - 1 / K) / (K - 1))
    assert v["avg_offset", 1] == pytest.approx(0.0)
