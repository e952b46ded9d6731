"""Best-layer table on a score table made by the real producers (tests/helpers/real_scores.py):
the real evaluators on the tiny scenes data, then collect_scores, as the rules run them."""
import numpy as np
import pandas as pd
import pytest
from helpers.real_scores import DEEP_BLOCKS, real_scores

from patchlens.analysis.best_layer import best_layer_table
from patchlens.tasks.registry import lower_is_better
from patchlens.errors import DataError

KEY = ["model", "dataset", "task", "variant", "metric", "shots", "feature", "head"]


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    return real_scores(tmp_path_factory)[0]


def _independent(scores: pd.DataFrame) -> pd.DataFrame:
    """best / last / gap written out plainly: overall rows, seed mean, max over layers (min for
    the depth errors)."""
    errors = {"rmse", "absrel", "log10"}
    rows = []
    s = scores[scores["sequence"].isin(["", "all"]) & scores["scale_bin"].isin(["", "all"])]
    for key, g in s.groupby(KEY):
        per_layer = {}
        seeds = {}
        for layer, gl in g.groupby("layer"):
            per_layer[layer] = gl["value"].mean()
            seeds[layer] = gl["seed"].nunique()
        lower = key[KEY.index("metric")] in errors
        best = (min if lower else max)(per_layer.values())
        best_layer = min(la for la, v in per_layer.items() if v == best)
        n = int(g["n_layers"].iloc[0])
        last = per_layer.get(n - 1, np.nan)
        rows.append(dict(zip(KEY, key), best_layer=best_layer, best_value=best,
                         last_value=last, gap=(last - best) if lower else (best - last),
                         n_seeds=seeds[best_layer], last_layer=n - 1))
    return pd.DataFrame(rows)


def test_values_match_an_independent_computation(scores):
    got = best_layer_table(scores, lower_is_better())
    want = _independent(scores)
    assert len(got) == len(want)
    assert not got.duplicated(KEY).any()  # one row per key, whatever count columns exist
    m = got.merge(want, on=KEY, suffixes=("", "_want"), validate="one_to_one")
    for c in ("best_layer", "last_layer", "n_seeds"):
        assert (m[c] == m[f"{c}_want"]).all(), c
    for c in ("best_value", "last_value", "gap"):
        np.testing.assert_allclose(m[c], m[f"{c}_want"], rtol=0, atol=1e-12, err_msg=c)
    # the regression of issue 9: rows split by per-seed counts had gap 0 everywhere
    assert (got["gap"] > 0).any()
    assert (got["gap"] >= 0).all()


def test_keys_are_exactly_the_task_keys(scores):
    got = best_layer_table(scores)
    low = got[got["task"] == "lowshot_cls"]
    # low-shot: one row per (metric, shots, feature); other tasks carry the fill values
    assert set(zip(low["metric"], low["shots"], low["feature"])) == set(
        zip(scores.loc[scores.task == "lowshot_cls", "metric"],
            scores.loc[scores.task == "lowshot_cls", "shots"],
            scores.loc[scores.task == "lowshot_cls", "feature"]))
    assert (got.loc[got["task"] != "lowshot_cls", "shots"] == -1).all()
    for c in ("n_support_images", "n_eval", "family", "depth_frac_x", "sequence", "scale_bin"):
        assert c not in got.columns


def test_final_norm_entry_counts_for_best_not_for_last(scores):
    got = best_layer_table(scores).set_index(KEY)
    deep = got.xs("deep", level="model")
    assert (deep["last_layer"] == DEEP_BLOCKS - 1).all()
    # the deep model's least noisy entry is the final-norm one (layer == n_blocks)
    out = deep[deep["best_layer"] == DEEP_BLOCKS]
    assert len(out) > 0
    s = scores[(scores.model == "deep") & (scores.task == "fewshot_seg")
               & (scores.metric == "miou_knn")]
    per_layer = s.groupby("layer")["value"].mean()
    row = deep.loc[("scenes", "fewshot_seg", "raw", "miou_knn", -1, "", "")]
    assert row["best_value"] == pytest.approx(per_layer.max())
    assert row["last_value"] == pytest.approx(per_layer[DEEP_BLOCKS - 1])
    assert (out["depth_frac"] == 1.0).all()


def test_per_item_rows_never_reach_the_table(scores):
    """A planted per-sequence row far above every overall score changes nothing."""
    base = best_layer_table(scores)
    t = scores[(scores.task == "tracking") & (scores.sequence != "all")].head(1).copy()
    assert len(t)
    t["value"], t["layer"] = 99.0, 0
    planted = best_layer_table(pd.concat([scores, t], ignore_index=True))
    pd.testing.assert_frame_equal(base, planted)


def test_seed_mean_then_max(scores):
    """Shuffling the values of one seed across layers moves the best layer as the mean says."""
    s = scores.copy()
    sel = (s.model == "deep") & (s.task == "fewshot_seg") & (s.metric == "miou_knn")
    s.loc[sel & (s.seed == 1) & (s.layer == 0), "value"] = 10.0  # seed mean at layer 0 is huge
    row = best_layer_table(s).query("model == 'deep' and task == 'fewshot_seg' "
                                    "and metric == 'miou_knn'").iloc[0]
    v0 = s.loc[sel & (s.layer == 0), "value"].mean()
    assert row["best_layer"] == 0 and row["best_value"] == pytest.approx(v0)
    assert row["n_seeds"] == 2


def test_lower_is_better_metric(scores):
    row = best_layer_table(scores, frozenset({"miou_knn"})).query("model == 'deep' and task == 'fewshot_seg' "
                                         "and metric == 'miou_knn'").iloc[0]
    s = scores[(scores.model == "deep") & (scores.task == "fewshot_seg")
               & (scores.metric == "miou_knn")].groupby("layer")["value"].mean()
    assert row["best_layer"] == s.idxmin() and row["best_value"] == pytest.approx(s.min())
    assert row["gap"] == pytest.approx(s[DEEP_BLOCKS - 1] - s.min())


def test_bad_tables_fail_with_one_clear_line(scores):
    with pytest.raises(DataError, match="n_layers"):
        best_layer_table(scores.drop(columns="n_layers"))
    with pytest.raises(DataError, match="TASK_KEYS"):
        best_layer_table(scores.assign(alpha_bin="x"))
    dup = scores[scores.task == "instance_id"].head(1)
    with pytest.raises(DataError, match="several overall rows"):
        best_layer_table(pd.concat([scores, dup], ignore_index=True))
    empty = best_layer_table(scores.iloc[:0])
    assert len(empty) == 0 and "gap" in empty.columns
