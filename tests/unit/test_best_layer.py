"""Best-layer table on a hand-made scores table."""
import numpy as np
import pandas as pd
import pytest

from patchlens.analysis.best_layer import best_layer_table
from patchlens.errors import DataError

BASE = {"dataset": "scenes", "variant": "raw"}


def _rows(model, task, metric, values_by_seed, **extra):
    """values_by_seed: {seed: [value per layer]}"""
    return [{**BASE, "model": model, "task": task, "metric": metric, "layer": layer,
             "seed": seed, "value": v, "params": f"{{'seed': {seed}}}", **extra}
            for seed, vals in values_by_seed.items() for layer, v in enumerate(vals)]


def _table():
    rows = []
    # few-shot segmentation: two seeds; the seed mean peaks at layer 2 of 4
    seg = {0: [0.1, 0.5, 0.7, 0.6], 1: [0.2, 0.6, 0.5, 0.4]}   # means .15 .55 .60 .50
    rows += _rows("dino", "fewshot_seg", "miou_knn", seg)
    # tracking: per-sequence rows and the overall "all" row; only "all" must survive
    rows += _rows("dino", "tracking", "jf", {0: [0.3, 0.9, 0.2, 0.1]}, sequence="a")
    rows += _rows("dino", "tracking", "jf", {0: [0.2, 0.3, 0.4, 0.5]}, sequence="all")
    # retrieval: per scale bin, both bins kept as keys; the best layer is the last for "large"
    rows += _rows("dino", "retrieval", "map", {0: [0.1, 0.4, 0.3, 0.2]}, scale_bin="small")
    rows += _rows("dino", "retrieval", "map", {0: [0.1, 0.2, 0.3, 0.4]}, scale_bin="large")
    # pixels baseline: one layer; a NaN score is ignored
    rows += _rows("pixels", "fewshot_seg", "miou_knn", {0: [0.05], 1: [np.nan]})
    return pd.DataFrame(rows)


def test_best_layer_rows():
    out = best_layer_table(_table())
    assert list(out.columns[:7]) == ["model", "dataset", "task", "variant", "metric", "sequence",
                                     "scale_bin"]
    assert "params" not in out and "seed" not in out
    assert len(out) == 5  # seg, tracking "all" only, retrieval x 2 bins, pixels
    got = out.set_index(["model", "task", "scale_bin"], drop=False)

    seg = got.loc[("dino", "fewshot_seg", np.nan)]
    means = np.mean([[0.1, 0.5, 0.7, 0.6], [0.2, 0.6, 0.5, 0.4]], axis=0)
    assert seg.best_layer == int(np.argmax(means)) == 2
    assert seg.best_value == pytest.approx(means.max())
    assert seg.last_value == pytest.approx(means[-1])
    assert seg.gap == pytest.approx(means.max() - means[-1])
    assert seg.n_layers == 4 and seg.depth_frac == pytest.approx(3 / 4) and seg.n_seeds == 2

    trk = out[out.task == "tracking"]
    assert list(trk.sequence) == ["all"]
    assert trk.best_layer.item() == 3 and trk.gap.item() == pytest.approx(0.0)

    small = got.loc[("dino", "retrieval", "small")]
    large = got.loc[("dino", "retrieval", "large")]
    assert (small.best_layer, large.best_layer) == (1, 3)
    assert small.gap == pytest.approx(0.4 - 0.2)

    pix = got.loc[("pixels", "fewshot_seg", np.nan)]
    assert (pix.best_layer, pix.n_layers, pix.depth_frac, pix.n_seeds) == (0, 1, 1.0, 1)


def test_n_layers_column_and_ties_and_per_item_rows_without_overall():
    df = pd.DataFrame(_rows("m", "tracking", "j", {0: [0.5, 0.5, 0.1]}, sequence="a")
                      + _rows("m", "tracking", "j", {0: [0.1, 0.2, 0.3]}, sequence="b"))
    df["n_layers"] = 12  # only the first 3 of 12 blocks were scored
    out = best_layer_table(df.drop(columns="params"))
    assert list(out.sequence) == ["a", "b"]  # no overall row: items stay keys
    a, b = out.iloc[0], out.iloc[1]
    assert a.best_layer == 0  # tie -> shallower layer
    assert a.n_layers == 12 and a.depth_frac == pytest.approx(1 / 12)
    assert b.best_layer == 2 and b.last_value == pytest.approx(0.3)


def test_missing_columns():
    with pytest.raises(DataError, match="metric"):
        best_layer_table(pd.DataFrame({"model": [], "dataset": [], "task": [], "variant": [],
                                       "layer": [], "value": []}))
