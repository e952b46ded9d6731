"""High-norm token statistics: planted tokens are found at the right layers and positions."""
import numpy as np
import pytest

from patchlens.analysis.token_norms import analyse, border_mask, check_params
from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError
from patchlens.features.store import FeatureStore, FeatureWriter
from helpers.synthetic import PATCH, upscale, write_dataset

GRID = (6, 6)
N, L, C = 8, 4, 16
STRONG = [(0, 0, 0), (1, 0, 3), (2, 5, 5), (3, 2, 2)]  # (image, y, x): 3 on the border, 1 inside
WEAK = [(4, 0, 1), (5, 3, 3)]                              # 1 border, 1 inside


def build(tmp_path):
    rng = np.random.default_rng(0)
    tok = rng.normal(size=(N, L, *GRID, C)).astype(np.float32)
    cls = rng.normal(size=(N, L, C)).astype(np.float32)
    base = np.median(np.linalg.norm(tok, axis=-1))
    direction = np.eye(C, dtype=np.float32)[0]
    for layer in (2, 3):                       # artifacts appear from the middle of the network
        for i, y, x in STRONG:
            tok[i, layer, y, x] = 30 * base * direction
        for i, y, x in WEAK:
            tok[i, layer, y, x] = 7 * base * direction
        cls[:, layer] = direction              # the class token points the artifacts' way
    sem = np.zeros((N, *GRID), np.uint8)
    sem[:, 2:4, 1:5] = 1                       # object patches; (3, 2, 2) and (5, 3, 3) on it
    root = write_dataset(tmp_path / "data", [{"image": f"im{i}", "split": "val",
                                              "semantic": upscale(sem[i])} for i in range(N)],
                         ["background", "thing"])
    attrs = {"model": "planted", "patch_size": PATCH, "input_size": np.array([48, 48])}
    path = tmp_path / "f.h5"
    with FeatureWriter(path, [f"im{i}" for i in range(N)], list(range(L)), GRID, C, True,
                       attrs) as w:
        w.write(tok.reshape(N, L, -1, C), cls)
    return FeatureStore(path), Dataset(root), sem.astype(bool)


def stat(df, layer, name, k=None):
    d = df[(df.layer == layer) & (df.statistic == name)]
    if k is not None:
        d = d[d.threshold == k]
    assert len(d) == 1, (layer, name, k)
    return d.value.iloc[0]


def test_planted_tokens_found_at_their_layers_and_positions(tmp_path):
    store, ds, objects = build(tmp_path)
    df = analyse(store, ds, {"thresholds": [5, 10, 20]})
    n_tok = N * GRID[0] * GRID[1]
    border = border_mask(GRID)
    for layer in (0, 1):                       # no artifact: nothing is 5x the median
        assert stat(df, layer, "frac_high", 5) == 0
        assert np.isnan(stat(df, layer, "border_high", 5))
    for layer in (2, 3):
        assert stat(df, layer, "frac_high", 5) == pytest.approx(6 / n_tok)
        assert stat(df, layer, "frac_high", 10) == pytest.approx(4 / n_tok)
        assert stat(df, layer, "frac_high", 20) == pytest.approx(4 / n_tok)
        want = np.mean([border[y, x] for _, y, x in STRONG])
        assert stat(df, layer, "border_high", 10) == pytest.approx(want)
        assert stat(df, layer, "border_high", 5) == pytest.approx(4 / 6)
        assert stat(df, layer, "border_all", 5) == pytest.approx(border.mean())
        assert stat(df, layer, "object_high", 10) == pytest.approx(
            np.mean([objects[i, y, x] for i, y, x in STRONG]))
        assert stat(df, layer, "object_all", 10) == pytest.approx(objects.mean())
        assert stat(df, layer, "cos_cls_high", 5) == pytest.approx(1.0, abs=1e-3)
        assert abs(stat(df, layer, "cos_cls_all", 5)) < 0.2
    # quantiles are those of the stored (float16) norms, computed here independently
    norms = np.linalg.norm(store.tokens(3), axis=-1)
    assert stat(df, 3, "norm_q1") == pytest.approx(norms.max(), rel=1e-5)
    assert stat(df, 3, "norm_median") == pytest.approx(np.median(norms), rel=1e-5)


def test_bad_thresholds_name_the_key():
    with pytest.raises(ConfigError, match="analyses.token_norms.params.thresholds"):
        check_params({"thresholds": [0.5]})
    with pytest.raises(ConfigError, match="analyses.token_norms.params"):
        check_params({"threshold": [5]})
