"""Paired comparisons built from real task units: identical models tie, a degraded copy loses."""
import numpy as np
import pandas as pd
import pytest

from patchlens.stats.paired import paired_table, read_units, verdict
from patchlens.stats.units import finish
from patchlens.tasks import instance_id
from helpers.synthetic import identity


def evaluate(tmp_path, store, ds, name, transform):
    units = []
    table = instance_id.run(store, ds, transform, {}, units=units)
    out = tmp_path / f"{name}.parquet"
    table = finish(table, units, {"n_boot": 300}, out,
                   {"task": "instance_id", "model": name, "dataset": "d", "variant": "raw"})
    return table.assign(task="instance_id", model=name, dataset="d", variant="raw",
                        n_layers=2), out


def test_identical_models_tie_and_degraded_copy_loses(tmp_path):
    from test_instance_id import build
    ds, store = build(tmp_path)
    rng = np.random.default_rng(0)

    def noisy(layer, x):
        return x + rng.normal(0, 0.6, x.shape).astype(np.float32)

    parts = [evaluate(tmp_path, store, ds, m, t) for m, t in
             (("a", identity), ("b", identity), ("c", noisy))]
    scores = pd.concat([p[0] for p in parts], ignore_index=True)
    units = read_units([p[1] for p in parts])
    table = paired_table(scores, units, n_boot=300)
    assert set(zip(table.model_a, table.model_b)) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert len(table) == 3 * 2 * 2  # pairs x metrics x (best, last)
    same = table[(table.model_a == "a") & (table.model_b == "b")]
    assert (same["diff"] == 0).all() and (same.p_value == 1).all()
    assert (same.ci_low == 0).all() and (same.ci_high == 0).all()
    assert (same.apply(verdict, axis=1) == "").all()
    # the oracle layer 0 is the best layer of a; the noisy copy's best value is lower
    best = table[(table.model_a == "a") & (table.model_b == "c") & (table.layer_choice == "best")]
    assert (best.layer_a == 0).all()
    for _, r in best.iterrows():
        va = scores[(scores.model == "a") & (scores.layer == r.layer_a)
                    & (scores.metric == r.metric)].value.iloc[0]
        vc = scores[(scores.model == "c") & (scores.layer == r.layer_b)
                    & (scores.metric == r.metric)].value.iloc[0]
        assert r["diff"] == pytest.approx(va - vc)
        assert r.ci_low > 0 and r.p_value < 0.05
        assert verdict(r) == "a > c"
