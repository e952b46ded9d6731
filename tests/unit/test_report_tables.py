"""Summary tables: score collection, variance spectra, and the shared reductions."""
import json

import h5netcdf
import numpy as np
import pandas as pd
import pytest

from patchlens.errors import ConfigError, DataError
from patchlens.report import tables as T
from patchlens.report import models as RM
from patchlens.report import variance_table as V

MODELS = {"dino": {"family": "contrastive", "n_layers": 4},
          "mae": {"family": "mim", "n_layers": 8},
          "pixels": {"family": "baseline", "n_layers": 1}}


def score_rows(task, model, dataset="scenes", variant="raw", layers=(0, 1, 2, 3), seeds=(0,),
               metric="miou_knn", value=lambda layer, seed: 0.1 * layer + 0.01 * seed, **extra):
    return pd.DataFrame([dict(task=task, model=model, dataset=dataset, variant=variant, layer=l,
                              seed=s, metric=metric, value=value(l, s), n_eval=10, n_skipped=0,
                              params=json.dumps({"k": 20}), **extra)
                         for l in layers for s in seeds])


def write(df, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def test_collect_fills_extras_and_depth(tmp_path):
    a = write(score_rows("fewshot_seg", "dino"), tmp_path / "a.csv")
    b = write(pd.concat([score_rows("retrieval", "mae", layers=range(8), metric="map",
                                    scale_bin=b) for b in ("small", "large")]), tmp_path / "b.csv")
    c = write(score_rows("lowshot_cls", "pixels", layers=(0,), metric="acc", shots=5,
                         feature="patch"), tmp_path / "c.csv")
    df = T.collect_scores([a, b, c], MODELS)
    assert len(df) == 4 + 16 + 1
    assert list(df.columns[:11]) == T.SCORE_COLUMNS
    for col in T.EXTRA_DEFAULTS:
        assert col in df.columns
    assert set(df.loc[df.task == "fewshot_seg", "scale_bin"]) == {""}
    assert set(df.loc[df.task != "lowshot_cls", "shots"]) == {-1}
    assert df["shots"].dtype == np.int64 and df["layer"].dtype == np.int64
    n_layers = df["model"].map({k: v["n_layers"] for k, v in MODELS.items()})
    np.testing.assert_allclose(df["depth_frac"], (df["layer"] + 1) / n_layers)
    assert (df.loc[df.model == "mae", "family"] == "mim").all()
    # one dtype per column: parquet round trip keeps every value
    out = tmp_path / "tables" / "scores.parquet"
    T.write_scores([a, b, c], MODELS, out)
    back = pd.read_parquet(out)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


def test_unknown_extra_column_kept(tmp_path):
    a = write(score_rows("fewshot_seg", "dino", head="knn"), tmp_path / "a.csv")
    b = write(score_rows("tracking", "dino", metric="jf", sequence="all", extra_k=3),
              tmp_path / "b.csv")
    df = T.collect_scores([a, b], MODELS)
    assert set(df["extra_k"]) == {3, -1}
    assert set(df["head"]) == {"knn", ""}


def test_missing_column_names_file(tmp_path):
    p = write(score_rows("fewshot_seg", "dino").drop(columns="n_eval"), tmp_path / "bad.csv")
    with pytest.raises(DataError, match=r"bad\.csv.*n_eval"):
        T.collect_scores([p], MODELS)


def test_nan_value_names_file_and_line(tmp_path):
    df = score_rows("fewshot_seg", "dino")
    df.loc[2, "value"] = np.nan
    p = write(df, tmp_path / "nan.csv")
    with pytest.raises(DataError, match=r"nan\.csv.*'value'.*line 4"):
        T.collect_scores([p], MODELS)


def test_non_integer_layer_rejected(tmp_path):
    df = score_rows("fewshot_seg", "dino")
    df["layer"] = df["layer"] + 0.5
    with pytest.raises(DataError, match="layer"):
        T.collect_scores([write(df, tmp_path / "x.csv")], MODELS)


def test_layer_beyond_depth_rejected(tmp_path):
    # layer == n_blocks (4 for dino) is the final-norm entry and is kept; beyond it fails
    ok = write(score_rows("fewshot_seg", "dino", layers=(0, 4)), tmp_path / "ok.csv")
    assert sorted(T.collect_scores([ok], MODELS)["layer"]) == [0, 4]
    p = write(score_rows("fewshot_seg", "dino", layers=(0, 5)), tmp_path / "deep.csv")
    with pytest.raises(DataError, match=r"deep\.csv.*layer 5"):
        T.collect_scores([p], MODELS)


def test_unknown_model_and_missing_depth(tmp_path):
    p = write(score_rows("fewshot_seg", "ibot"), tmp_path / "i.csv")
    with pytest.raises(ConfigError, match="ibot"):
        T.collect_scores([p], MODELS)
    with pytest.raises(ConfigError, match="n_layers"):
        T.collect_scores([p], {"ibot": {"family": "mim"}})


def test_duplicate_scores_rejected(tmp_path):
    a = write(score_rows("fewshot_seg", "dino"), tmp_path / "a.csv")
    b = write(score_rows("fewshot_seg", "dino"), tmp_path / "b.csv")
    with pytest.raises(DataError, match="twice"):
        T.collect_scores([a, b], MODELS)


def test_no_csv_gives_typed_empty_table():
    df = T.collect_scores([], MODELS)
    assert list(df.columns) == T.TABLE_COLUMNS["scores"] and len(df) == 0


def write_variance_file(path, var, layers, dataset=None):
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"layer": var.shape[0], "channel": var.shape[1]}
        f.create_variable("layer", ("layer",), data=np.asarray(layers, dtype="int32"))
        f.create_variable("mean", ("layer", "channel"), data=np.zeros_like(var))
        f.create_variable("var", ("layer", "channel"), data=var)
        if dataset:
            f.attrs["dataset"] = dataset


def test_variance_table_sorts_each_layer(tmp_path):
    rng = np.random.default_rng(0)
    var = rng.gamma(1.0, size=(3, 16)).astype("float32")
    write_variance_file(tmp_path / "scenes.h5", var, [0, 5, 11])
    write_variance_file(tmp_path / "other.h5", var[:1], [2], dataset="voc")
    df = V.variance_table({"mae": tmp_path / "scenes.h5", "dino": [tmp_path / "other.h5"]})
    assert set(df["dataset"]) == {"scenes", "voc"}
    mae = df[df.model == "mae"]
    assert len(mae) == 3 * 16
    for i, layer in enumerate([0, 5, 11]):
        got = mae[mae.layer == layer].sort_values("rank")["variance"].to_numpy()
        np.testing.assert_allclose(got, np.sort(var[i])[::-1], rtol=1e-6)
    assert (np.diff(mae.groupby("layer")["rank"].apply(list).iloc[0]) == 1).all()


def test_variance_missing_var_names_file(tmp_path):
    with h5netcdf.File(tmp_path / "v.h5", "w") as f:
        f.dimensions = {"layer": 1}
        f.create_variable("layer", ("layer",), data=np.zeros(1, "int32"))
    with pytest.raises(DataError, match=r"v\.h5.*'var'"):
        V.variance_table({"m": tmp_path / "v.h5"})


def test_overall_uses_all_bin_else_macro_mean_and_averages_seeds(tmp_path):
    val = {"small": lambda l, s: 0.2 + s, "large": lambda l, s: 0.6 + s}
    parts = [score_rows("retrieval", "dino", layers=(0,), seeds=(0, 1), metric="map",
                        scale_bin=b, value=v) for b, v in val.items()]
    trk = [score_rows("tracking", "dino", layers=(0,), metric="jf", sequence=s, value=v)
           for s, v in (("a", lambda l, s: 0.1), ("b", lambda l, s: 0.3),
                        ("all", lambda l, s: 0.25))]
    # keypoints: per-category PCKs and the evaluator's "all" row (their mean, not the rows' mean)
    kp = [score_rows("keypoints", "dino", layers=(0,), metric="pck@0.1", category=c, value=v)
          for c, v in (("cat", lambda l, s: 0.2), ("dog", lambda l, s: 0.4),
                       ("all", lambda l, s: 0.35))]
    p = write(pd.concat(parts + trk + kp), tmp_path / "s.csv")
    ov = T.overall(T.collect_scores([p], MODELS)).set_index("task")
    # retrieval has no "all" bin: macro mean over bins, then mean and std over seeds
    per_seed = [np.mean([v(0, s) for v in val.values()]) for s in (0, 1)]
    assert ov.loc["retrieval", "value"] == pytest.approx(np.mean(per_seed))
    assert ov.loc["retrieval", "std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert ov.loc["retrieval", "n_seeds"] == 2
    # tracking and keypoints have the evaluator's overall row: used as is
    assert ov.loc["tracking", "value"] == pytest.approx(0.25)
    assert ov.loc["keypoints", "value"] == pytest.approx(0.35)


def test_best_drop_best_layer_and_summary(tmp_path):
    raw = score_rows("fewshot_seg", "mae", layers=range(8), value=lambda l, s: 0.05 * l)
    # drop2 peaks mid-network above raw; drop8 is worse everywhere
    d2 = score_rows("fewshot_seg", "mae", variant="drop2", layers=range(8),
                    value=lambda l, s: 0.6 - 0.05 * abs(l - 3))
    d8 = score_rows("fewshot_seg", "mae", variant="drop8", layers=range(8),
                    value=lambda l, s: 0.01 * l)
    p = write(pd.concat([raw, d2, d8]), tmp_path / "s.csv")
    scores = T.collect_scores([p], MODELS)
    ov = T.overall(scores)
    bd = T.best_drop_variant(ov)
    assert bd[["variant", "m"]].values.tolist() == [["drop2", 2]]
    bl = T.best_layer_rows(scores).set_index("variant")
    assert bl.loc["drop2", "best_layer"] == 3
    assert bl.loc["raw", "best_layer"] == 7
    assert bl.loc["drop2", "gap"] == pytest.approx((0.6) - (0.6 - 0.05 * 4))
    summ = T.summary_table(scores).iloc[0]
    assert summ["raw_best"] == pytest.approx(0.05 * 7) and summ["raw_layer"] == 7
    assert summ["variant_any"] == "drop2" and summ["best_any"] == pytest.approx(0.6)


def test_headline_prefers_primary_metric_and_patch_feature(tmp_path):
    rows = pd.concat([
        score_rows("lowshot_cls", "dino", metric="acc", shots=1, feature="patch"),
        score_rows("lowshot_cls", "dino", metric="acc", shots=10, feature="cls"),
        score_rows("lowshot_cls", "dino", metric="acc", shots=10, feature="patch"),
        score_rows("lowshot_cls", "dino", metric="mlmap", shots=10, feature="patch"),
        score_rows("keypoints", "dino", metric="pck@0.05"),
    ])
    ov = T.overall(T.collect_scores([write(rows, tmp_path / "s.csv")], MODELS))
    labels = T.headline(ov).groupby("task")["metric_label"].first()
    assert labels["lowshot_cls"] == "acc (patch, 10-shot)"
    assert labels["keypoints"] == "pck@0.05"   # the only alpha present


def test_load_tables(tmp_path):
    got = T.load_tables(tmp_path)
    assert set(got) == set(T.TABLE_FILES) and all(len(d) == 0 for d in got.values())
    pd.DataFrame({"model": ["a"], "layer": [0], "head": [1]}).to_csv(
        tmp_path / "offset_heads.csv", index=False)
    with pytest.raises(DataError, match=r"offset_heads\.csv.*direction"):
        T.load_tables(tmp_path)


def test_models_table_roundtrip(tmp_path):
    cfg = {"dino": {"family": "contrastive", "n_layers": 12, "timm": "vit_small_patch16_224.dino"},
           "pixels": {"family": "baseline", "n_layers": 1}}
    RM.write_models(cfg, tmp_path / "models.csv")
    df = T.load_tables(tmp_path)["models"]
    assert df.set_index("model").loc["dino", "source"] == "vit_small_patch16_224.dino"
    assert RM.model_families({"models": df}) == {"dino": "contrastive", "pixels": "baseline"}
    assert RM.model_labels({"models": df}) == {"dino": "dino", "pixels": "pixels"}
    assert RM.model_depths({"models": df}) == {"dino": 12, "pixels": 1}


def test_models_table_labels_and_family_defaults(tmp_path):
    """Label and family from models.resolve.model_label: a baseline without a family is
    'baseline' (grey), a timm model without one 'other'; the label defaults to the key."""
    from patchlens.models.resolve import model_label
    cfg = {"dino": {"timm": "vit_small_patch16_224.dino", "label": "DINO ViT-S/16",
                    "family": "contrastive", "n_layers": 12},
           "plain": {"timm": "vit_base_patch16_224", "n_layers": 12},
           "pixels": {"baseline": "pixels", "n_layers": 1}}
    RM.write_models(cfg, tmp_path / "models.csv")
    df = T.load_tables(tmp_path)["models"].set_index("model")
    assert df["label"].to_dict() == {"dino": "DINO ViT-S/16", "plain": "plain",
                                     "pixels": "pixels"}
    assert df["family"].to_dict() == {"dino": "contrastive", "plain": "other",
                                      "pixels": "baseline"}
    assert {m: model_label(m, e) for m, e in cfg.items()} == {
        m: (df.loc[m, "label"], df.loc[m, "family"]) for m in cfg}
    p = write(score_rows("fewshot_seg", "pixels", layers=(0,)), tmp_path / "s.csv")
    assert set(T.collect_scores([p], cfg)["family"]) == {"baseline"}
