"""Units collected through ``run(..., units=[])`` reproduce each task's own scores exactly when
re-accumulated without resampling, collected layer by layer as the workflow does."""
import numpy as np
import pandas as pd
import pytest

from patchlens.stats.bootstrap import point
from patchlens.stats.units import add_intervals, key_columns, unit_data
from patchlens.tasks import fewshot_seg, instance_id, lowshot_cls, retrieval, tracking
from helpers.synthetic import identity


def layer_by_layer(module, store, ds, params):
    """Scores and units of every layer, one ``run(layers=[layer])`` call per layer."""
    tables, units = [], []
    for layer in store.layers:
        tables.append(module.run(store, ds, identity, params, layers=[layer], units=units))
    return pd.concat(tables, ignore_index=True), pd.concat(units, ignore_index=True)


def check_reproduces(table, units):
    """Every score row: the seed's units re-accumulated (no resampling) give its value."""
    keys = key_columns(units)
    n = 0
    for key, g in units.groupby(keys + ["seed"], sort=False):
        data, _, _ = unit_data(g)
        row = table
        for k, v in zip(keys + ["seed"], key):
            row = row[row[k] == v]
        assert len(row) == 1, key
        assert point(data) == pytest.approx(row["value"].iloc[0], abs=1e-12), key
        n += 1
    assert n == len(table)  # every score row has its units
    with_ci = add_intervals(table, units, n_boot=200)
    assert (with_ci.ci_low <= with_ci.ci_high).all()
    pd.testing.assert_frame_equal(with_ci.drop(columns=["ci_low", "ci_high"]), table)
    return with_ci


def test_fewshot_units_reaccumulate_confusion_counts(tmp_path):
    from test_fewshot_seg import build, params
    ds, store = build(tmp_path)
    table, units = layer_by_layer(fewshot_seg, store, ds, params())
    assert set(units.kind) == {"iou"} and units.unit.nunique() == 10  # the 10 query images
    check_reproduces(table, units)
    # the confusion matrix itself: summed per-image counts equal the task's matrix
    conf, _ = fewshot_seg.confusions(store, ds, identity, params(), layers=[1])
    m = conf[(1, 0, "knn")]
    u = units[(units.layer == 1) & (units.seed == 0) & (units.metric == "miou_knn")]
    tp = u[u.cls >= 0].groupby("cls").tp.sum()
    assert np.array_equal(tp.reindex(range(4), fill_value=0).to_numpy(), np.diag(m))


def test_instance_id_units_are_queries(tmp_path):
    from test_instance_id import build
    ds, store = build(tmp_path)
    table, units = layer_by_layer(instance_id, store, ds, {})
    assert units.groupby(["layer", "metric"]).unit.nunique().eq(table.n_eval.iloc[0]).all()
    check_reproduces(table, units)


def test_retrieval_units_per_scale_bin(tmp_path):
    from test_retrieval import build
    ds, store = build(tmp_path)[:2]
    table, units = layer_by_layer(retrieval, store, ds, {})
    assert set(units.scale_bin) == set(table.scale_bin)
    check_reproduces(table, units)


def test_lowshot_units_with_seeds_and_multilabel(tmp_path):
    from test_lowshot_cls import build
    ds, store = build(tmp_path, n_val=8, multi=True)
    table, units = layer_by_layer(lowshot_cls, store, ds, {})
    assert set(units.kind) == {"ratio", "mlmap"} and units.seed.nunique() == 3
    out = check_reproduces(table, units)
    # one interval per score: equal on every seed row of it
    assert out.groupby(["layer", "metric", "shots", "feature"]).ci_low.nunique().eq(1).all()


@pytest.mark.parametrize("average", ["objects", "sequences"])
def test_tracking_units_objects_and_sequences(tmp_path, average):
    import test_tracking as tt
    videos = {"one": tt.moving_boxes(tt.T, tt.H, tt.W, [(20, 30, 23, 31, 2, -3)]),
              "two": tt.moving_boxes(tt.T, tt.H, tt.W, tt.UNALIGNED)}
    ds, store = tt.build(tmp_path, videos, tt.oracle)
    p = dict(tracking.DEFAULT_PARAMS, skip_last_frame=False, n_last_frames=2, average=average)
    table, units = layer_by_layer(tracking, store, ds, p)
    overall = units[units.sequence == "all"]
    assert overall.unit.nunique() == (3 if average == "objects" else 2)
    check_reproduces(table, units)
