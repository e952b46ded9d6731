"""Figures: drawn from tables only, skipped without data, consistent colours, paper widths.

``synthetic_tables`` builds every table of results/tables/ through the same functions the
workflow uses (score CSVs -> collect_scores, variance files -> variance_table) plus the analysis
tables written directly; the HTML and browser tests load it from this file.
"""
import json
import zlib
from pathlib import Path

import h5netcdf
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from patchlens.analysis.best_layer import best_layer_table
from patchlens.analysis.offset_heads import DIRECTIONS, offset_candidates
from patchlens.io import write_csv
from patchlens.report import figures as F
from patchlens.report import style
from patchlens.report import tables as T
from patchlens.report import models as RM
from patchlens.report.variance_table import write_variance
from patchlens.report.statistics import FILES as STATS_FILES, load_tables as stats_tables

REPO = Path(__file__).resolve().parents[2]
MODELS = {"dino": {"family": "contrastive", "n_layers": 6, "timm": "vit_small_patch16_224.dino"},
          "mae": {"family": "mim", "n_layers": 6, "timm": "vit_base_patch16_224.mae"},
          "ibot": {"family": "mim", "n_layers": 6, "weights": "https://example.org/ibot.pth"},
          "pixels": {"family": "baseline", "n_layers": 1}}


def _curve(model, layer, n, peak):
    """A smooth per-layer score peaking at relative depth ``peak``."""
    if n == 1:
        return 0.2
    x = (layer + 1) / n
    return 0.3 + 0.5 * np.exp(-((x - peak) / 0.35) ** 2) + 0.03 * (model == "dino")


def _rows_n(task, model, metric, variant="raw", seeds=(0,), fn=None, n=None, **extra):
    n = n or MODELS[model]["n_layers"]
    peak = {"dino": 0.9, "mae": 0.6, "ibot": 0.75, "pixels": 1.0}[model]
    rng = np.random.default_rng(zlib.crc32(f"{task}/{model}/{metric}/{variant}".encode()))
    out = []
    if task == "fewshot_seg":  # the support counts the evaluators write
        extra = dict(n_support_images=40, n_support_patches=1960, n_classes_short=2,
                     n_classes_missing=1, **extra)
    if task == "lowshot_cls":
        extra = dict(n_classes_short=2, n_classes_missing=1, **extra)
    if task == "hummingbird":  # the memory bank the evaluator reports
        extra = dict(n_memory=492, n_memory_images=12, n_patches_per_image=41, **extra)
    if task == "depth":
        extra = dict(n_train_patches=1000, n_empty=0, **extra)
    for layer in range(n):
        for s in seeds:
            v = fn(layer, n) if fn else _curve(model, layer, n, peak)
            v = float(np.clip(v + 0.01 * rng.standard_normal(), 0, 1))
            out.append(dict(task=task, model=model, dataset="scenes", variant=variant,
                            layer=layer, seed=s, metric=metric, value=v,
                            ci_low=max(0.0, v - 0.04), ci_high=min(1.0, v + 0.04),
                            n_eval=50, n_skipped=0, params=json.dumps({"seed": s}), **extra))
    return out


def synthetic_scores(models=MODELS):
    rows = []
    for m in models:
        def _rows(*a, _n=models[m]["n_layers"], **k):
            return _rows_n(*a, n=_n, **k)
        for metric in ("miou_knn", "miou_linear"):
            rows += _rows("fewshot_seg", m, metric, seeds=(0, 1, 2))
            if m != "pixels":
                for k in (1, 4, 16):
                    # MAE-like models gain from dropping a few channels, others lose
                    gain = {"mae": 0.15, "ibot": 0.05}.get(m, -0.02) * (k <= 4) - 0.01 * k
                    rows += _rows("fewshot_seg", m, metric, f"drop{k}", seeds=(0, 1, 2),
                                  fn=lambda l, n, m=m, g=gain: _curve(m, l, n, 0.6) + g)
        for metric in ("top1", "map"):
            rows += _rows("instance_id", m, metric)
        rows += _rows("hummingbird", m, "miou")
        # as the retrieval evaluator writes it: per bin and the overall "all" row
        for b, scale in (("0.00-0.20", 0.5), ("0.20-0.40", 0.8), ("0.40-1.00", 1.0),
                         ("all", 0.9)):
            rows += _rows("retrieval", m, "map", scale_bin=b,
                          fn=lambda l, n, m=m, s=scale: s * _curve(m, l, n, 0.8))
        for seq in ("bear", "car", "all"):
            for metric in ("j", "f", "jf"):
                rows += _rows("tracking", m, metric, sequence=seq)
        for a in ("0.05", "0.1"):  # per category, and the evaluator's mean over them ("all")
            for cat, off in (("disc", -0.05), ("ring", 0.05), ("all", 0.0)):
                rows += _rows("keypoints", m, f"pck@{a}", category=cat,
                              fn=lambda l, n, m=m, o=off: _curve(m, l, n, 0.7) + o)
        for feat, off in (("patch", 0.0), ("cls", -0.1)):
            for metric in ("acc", "mlmap"):
                rows += _rows("lowshot_cls", m, metric, shots=5, feature=feat,
                              fn=lambda l, n, m=m, o=off: _curve(m, l, n, 0.7) + o)
        for metric in ("rmse", "absrel", "log10", "delta1", "delta2", "delta3"):
            rows += _rows("depth", m, metric)
    return pd.DataFrame(rows)


def synthetic_tables(tables_dir, models=MODELS) -> Path:
    """Write every results/tables/ file for ``models`` under ``tables_dir``; returns it."""
    tables_dir = Path(tables_dir)
    work = tables_dir.parent / "_synthetic"
    work.mkdir(parents=True, exist_ok=True)
    scores = synthetic_scores(models)
    paths = []
    for (task, model, variant), d in scores.groupby(["task", "model", "variant"]):
        p = work / "scores" / task / model / "scenes" / f"{variant}.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        d.dropna(axis=1, how="all").to_csv(p, index=False)
        paths.append(p)
    df = T.write_scores(paths, models, tables_dir / "scores.parquet")
    RM.write_models(models, tables_dir / "models.csv")

    rng = np.random.default_rng(0)
    vfiles = {}
    deep = [m for m in models if models[m]["n_layers"] > 1]
    for m in deep:
        n, C = models[m]["n_layers"], 32
        var = rng.gamma(2.0, size=(n, C))
        if m == "mae":
            var[:, :3] *= 200  # a few dominant channels
        p = work / "variance" / m / "scenes.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5netcdf.File(p, "w") as f:
            f.dimensions = {"layer": n, "channel": C}
            f.create_variable("layer", ("layer",), data=np.arange(n, dtype="int32"))
            f.create_variable("mean", ("layer", "channel"), data=np.zeros((n, C)))
            f.create_variable("var", ("layer", "channel"), data=var)
        vfiles[m] = p
    write_variance(vfiles, tables_dir / "variance.parquet")

    att = []
    for m in deep:
        n = models[m]["n_layers"]
        for layer in range(n):
            for h in range(4):
                local = 20 + 10 * h if m == "mae" else 20 + 25 * layer + 8 * h
                att += [(m, "scenes", layer, h, "distance", float(local)),
                        (m, "scenes", layer, h, "entropy", 2 + 0.2 * layer + 0.1 * h),
                        (m, "scenes", layer, h, "cls_share", 0.05 * layer / n),
                        (m, "scenes", layer, h, "avg_offset", 0.1 * h / (layer + 1))]
            att.append((m, "scenes", layer, -1, "diversity", 1.0 - 0.1 * layer))
    pd.DataFrame(att, columns=T.TABLE_COLUMNS["attention"]).to_parquet(
        tables_dir / "attention.parquet")

    heads, maps = [], []
    dirs = {"right": (0, 1), "left": (0, -1), "up": (-1, 0), "down": (1, 0)}
    for m in deep:
        for layer in range(2):
            for h, (name, (dy, dx)) in enumerate(dirs.items()):
                flagged = (m != "dino") or layer == 0
                heads.append((m, layer, h, name, dy, dx, 0.5 + 0.1 * h, flagged))
                for yy in range(-3, 4):
                    for xx in range(-3, 4):
                        v = np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2))
                        maps.append((m, layer, h, yy, xx, float(v)))
    pd.DataFrame(heads, columns=T.TABLE_COLUMNS["offset_heads"]).to_csv(
        tables_dir / "offset_heads.csv", index=False)
    pd.DataFrame(maps, columns=T.TABLE_COLUMNS["offset_maps"]).to_parquet(
        tables_dir / "offset_maps.parquet")

    cka = []
    for i, a in enumerate(deep):
        for b in deep[i:]:
            na, nb = models[a]["n_layers"], models[b]["n_layers"]
            for la in range(na):
                for lb in range(nb):
                    v = np.exp(-abs((la + 1) / na - (lb + 1) / nb) * 3) * (1 if a == b else 0.8)
                    cka += [(a, b, la, lb, "patch", v), (a, b, la, lb, "image", v ** 0.5),
                            (a, b, la, lb, "tokens_ln", v ** 2)]
    pd.DataFrame(cka, columns=T.TABLE_COLUMNS["cka"]).to_parquet(tables_dir / "cka.parquet")

    # as the best_layer rule writes it
    write_csv(best_layer_table(df), tables_dir / "best_layer.csv")
    synthetic_token_norms(models).to_parquet(tables_dir / "token_norms.parquet")
    synthetic_patch_pca(models).to_parquet(tables_dir / "patch_pca.parquet")
    return tables_dir


def synthetic_patch_pca(models=MODELS) -> pd.DataFrame:
    """tables/patch_pca.parquet: random patch colours at three layers of each deep model and
    one 8 x 12 image (the real rows: tests/unit/test_patch_views.py)."""
    rng = np.random.default_rng(0)
    rows = []
    for m, e in models.items():
        n = e["n_layers"]
        for layer in sorted({0, n // 2, n}) if n > 1 else [0]:
            for r in range(2):
                for c in range(3):
                    rows.append(("pca", m, "scenes", "im0", layer, n, r, c, *rng.uniform(size=3)))
    for r in range(8):
        for c in range(12):
            rows.append(("image", "", "scenes", "im0", -1, 0, r, c, *rng.uniform(size=3)))
    return pd.DataFrame(rows, columns=T.TABLE_COLUMNS["patch_pca"])


def synthetic_token_norms(models=MODELS) -> pd.DataFrame:
    """tables/token_norms.parquet from random tokens with a few planted high-norm ones from the
    middle layer on (the statistics come from the real function)."""
    from patchlens.analysis.token_norms import token_norm_stats
    rng = np.random.default_rng(0)
    out = []
    for m, e in models.items():
        for layer in range(e["n_layers"]):
            tok = rng.normal(size=(4, 6, 6, 8)).astype(np.float32)
            if layer >= e["n_layers"] // 2:
                tok[:, 0, 0] *= 40
            out.append(token_norm_stats(tok, rng.normal(size=(4, 8))).assign(
                model=m, dataset="scenes", layer=layer))
    return pd.concat(out, ignore_index=True)


@pytest.fixture(scope="module")
def tables_dir(tmp_path_factory):
    return synthetic_tables(tmp_path_factory.mktemp("report") / "tables")


@pytest.fixture(scope="module")
def tables(tables_dir):
    return {**T.load_tables(tables_dir), **stats_tables(tables_dir)}


def test_catalogue_all_drawn_at_paper_width(tables):
    for name, spec in F.FIGURES.items():
        fig = spec.fn.draw(tables)
        assert fig is not None, name
        assert fig.get_size_inches()[0] in (style.SINGLE, style.DOUBLE), name


def test_make_figures_writes_png_and_pdf(tables_dir, tmp_path):
    # saving is the slow part (about 0.5 s a figure): the browser test saves the whole catalogue
    names = ["tracking", "cka_image"]
    written = F.make_figures(tables_dir, tmp_path, names=names)
    assert sorted(p.name for p in written) == sorted(f"{n}{e}" for n in names
                                                     for e in (".png", ".pdf"))
    for name in names:
        with Image.open(tmp_path / f"{name}.png") as im:
            widths = [round(w * style.DPI) for w in (style.SINGLE, style.DOUBLE)]
            assert im.size[0] in widths and im.size[1] > 100, (name, im.size)
        assert (tmp_path / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_catalogue_entries():
    for name, (fn, need, caption) in F.FIGURES.items():
        assert callable(fn) and fn.__name__ == f"fig_{name}"
        assert need and set(need) <= set(T.TABLE_FILES) | set(STATS_FILES), name
        assert len(caption) > 40


def test_every_figure_has_its_rst_caption():
    """report/captions/<name>.rst is the one source of each caption (Snakemake's report and the
    catalogue both read it): one per figure, no orphan, each one plain reStructuredText
    paragraph, and the catalogue holds exactly its text."""
    core = pytest.importorskip("docutils.core")
    captions = REPO / "report" / "captions"
    assert sorted(p.stem for p in captions.glob("*.rst")) == sorted(F.FIGURES)
    for name, spec in F.FIGURES.items():
        text = (captions / f"{name}.rst").read_text()
        assert spec.caption == " ".join(text.split()) and len(spec.caption) > 40, name
        doc = core.publish_doctree(text, settings_overrides={"report_level": 5})
        assert [n.tagname for n in doc.children] == ["paragraph"], name
        assert doc.astext() == text.strip(), name


def test_missing_caption_is_a_config_error(tmp_path):
    from patchlens.errors import ConfigError

    with pytest.raises(ConfigError, match="new_fig.rst"):
        F.read_caption("new_fig", tmp_path)


def test_offset_candidates_name_every_neighbour_as_directions():
    """One head per neighbour, each putting its mass on that neighbour: the candidate's
    direction is the analysis' own name for the offset."""
    rows = [dict(model="m", layer=0, head=h, dy=dy, dx=dx, value=float((dy, dx) == nb))
            for h, nb in enumerate([(0, 1), (0, -1), (-1, 0), (1, 0)])
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    cand = offset_candidates(pd.DataFrame(rows), per_model=4).sort_values("head")
    assert cand["direction"].tolist() == [DIRECTIONS[nb] for nb in
                                          [(0, 1), (0, -1), (-1, 0), (1, 0)]]
    assert cand["direction"].tolist() == ["right", "left", "up", "down"]


@pytest.mark.parametrize("name", list(F.FIGURES))
def test_empty_tables_skip_and_remove_stale(name, tmp_path):
    empty = {k: T.empty_table(k) for k in T.TABLE_FILES}
    assert F.FIGURES[name].fn(empty, tmp_path / name) is None
    (tmp_path / f"{name}.png").write_bytes(b"old")
    assert F.make_figure(name, empty, tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_skip_when_rows_are_for_other_tasks(tables):
    only_fewshot = dict(tables, scores=tables["scores"].query("task == 'fewshot_seg'"))
    assert F.fig_fewshot_seg.draw(only_fewshot) is not None
    for fn in (F.fig_tracking, F.fig_instance_id, F.fig_keypoints, F.fig_lowshot_cls,
               F.fig_retrieval_scale):
        assert fn.draw(only_fewshot) is None, fn.__name__
    # no flagged head: the figure shows the strongest neighbours and says so in its title
    no_flag = dict(tables, offset_heads=tables["offset_heads"].assign(flagged=False))
    assert "no head passes" in F.fig_offset_heads.draw(no_flag)._suptitle.get_text()
    as_text = dict(tables, offset_heads=tables["offset_heads"].assign(flagged="False"))
    fig = F.fig_offset_heads.draw(as_text)  # "False" read from a CSV is not a flag
    assert "no head passes" in fig._suptitle.get_text()
    assert F.fig_cka_image.draw(dict(tables, cka=tables["cka"].query("level == 'patch'"))) is None


def _model_lines(fig):
    return [l for ax in fig.axes for l in ax.get_lines() if l.get_label() in MODELS]


def test_model_colours_consistent_across_figures(tables):
    expect = style.model_styles({m: e["family"] for m, e in MODELS.items()})
    assert len({s.color for s in expect.values()}) == len(MODELS)
    seen = 0
    for fn in (F.fig_fewshot_seg, F.fig_tracking, F.fig_instance_id, F.fig_keypoints):
        for line in _model_lines(fn.draw(tables)):
            assert line.get_color() == expect[line.get_label()].color
            seen += 1
    assert seen > 10
    # the legend shows every model, the baseline included
    fig = F.fig_tracking.draw(tables)
    assert {t.get_text() for t in fig.legends[0].get_texts()} == set(MODELS)


def test_fewshot_raw_solid_and_best_drop_dashed(tables):
    fig = F.fig_fewshot_seg.draw(tables)
    ov = T.overall(tables["scores"].query("task == 'fewshot_seg'"))
    best = T.best_drop_variant(ov).set_index(["model", "metric_label"])["variant"]
    ax = {a.get_title(): a for a in fig.axes}[F.metric_title("miou_knn")]
    for m in ("dino", "mae"):
        lines = [l for l in ax.get_lines() if l.get_label() == m]
        by_style = {l.get_linestyle(): l for l in lines}
        assert set(by_style) == {"-", "--"}
        for ls, variant in (("-", "raw"), ("--", best[(m, "miou_knn")])):
            want = ov.query("model == @m and metric == 'miou_knn' and variant == @variant")
            np.testing.assert_allclose(by_style[ls].get_ydata(),
                                       want.sort_values("layer")["value"])
    # the baseline is a horizontal line at its (single-layer, seed-mean) score
    base = ov.query("model == 'pixels' and metric == 'miou_knn'")["value"].item()
    flat = [l for l in ax.get_lines() if np.allclose(l.get_ydata(), base)
            and len(set(l.get_ydata())) == 1]
    assert flat and flat[0].get_color() == style.model_styles(
        {m: e["family"] for m, e in MODELS.items()})["pixels"].color


def test_layer_axis_block_index_or_depth_fraction(tmp_path):
    same = F.fig_instance_id.draw(T.load_tables(synthetic_tables(tmp_path / "a" / "tables")))
    xs = np.concatenate([l.get_xdata() for l in _model_lines(same)])
    assert set(xs) == set(range(6))
    mixed = dict(MODELS, mae=dict(MODELS["mae"], n_layers=12))
    fig = F.fig_instance_id.draw(T.load_tables(synthetic_tables(tmp_path / "b" / "tables", mixed)))
    for line in _model_lines(fig):
        n = mixed[line.get_label()]["n_layers"]
        np.testing.assert_allclose(line.get_xdata(), (np.arange(n) + 1) / n)
    assert "relative depth" in fig.axes[0].get_xlabel()


def test_lowshot_patch_solid_cls_dashed(tables):
    fig = F.fig_lowshot_cls.draw(tables)
    assert [a.get_title() for a in fig.axes] == ["accuracy (5-shot)", "multi-label mAP (5-shot)"]
    s = tables["scores"].query("task == 'lowshot_cls' and metric == 'acc' and model == 'dino'")
    lines = {l.get_linestyle(): l for l in _model_lines(fig) if l.axes is fig.axes[0]
             and l.get_label() == "dino"}
    for ls, feat in (("-", "patch"), ("--", "cls")):
        want = s[s.feature == feat].sort_values("layer")["value"]
        np.testing.assert_allclose(lines[ls].get_ydata(), want)


def test_retrieval_uses_each_models_best_layer(tables):
    fig = F.fig_retrieval_scale.draw(tables)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.00-0.20", "0.20-0.40",
                                                             "0.40-1.00"]
    s = tables["scores"].query("task == 'retrieval' and variant == 'raw'")
    per_layer = s.groupby(["model", "layer", "scale_bin"])["value"].mean().unstack()
    for line in [l for l in ax.get_lines() if not l.get_label().startswith("_")]:
        model = line.get_label().split(" ")[0]
        pm = per_layer.loc[model]
        best = pm["all"].idxmax()  # the best layer of the overall mAP (best-layer table)
        np.testing.assert_allclose(line.get_ydata(),
                                   pm.loc[best, ["0.00-0.20", "0.20-0.40", "0.40-1.00"]])
        if model != "pixels":
            assert line.get_label() == f"{model} (L{best})"


def test_drop_sweep_at_best_raw_layer(tables):
    fig = F.fig_drop_sweep.draw(tables)
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert titles == ["dino (contrastive)", "ibot (mim)", "mae (mim)"]
    ax = fig.axes[titles.index("mae (mim)")]
    line = next(l for l in ax.get_lines() if l.get_label().startswith("Few-shot"))
    assert list(line.get_xdata()) == [0, 1, 4, 16]
    ov = T.overall(tables["scores"].query("task == 'fewshot_seg' and model == 'mae'"))
    ov = ov[ov.metric == "miou_knn"]
    layer = ov[ov.variant == "raw"].sort_values("value").iloc[-1]["layer"]
    at = ov[ov.layer == layer].set_index("variant")["value"]
    np.testing.assert_allclose(line.get_ydata(), at[["raw", "drop1", "drop4", "drop16"]])


def test_offset_heads_panels_are_the_flagged_heads(tables):
    fig = F.fig_offset_heads.draw(tables)
    shown = [a for a in fig.axes if a.get_visible() and a.images]
    assert len(shown) == min(int(tables["offset_heads"]["flagged"].sum()), F.MAX_OFFSET_PANELS)
    # models in family order, the strongest head first; each map peaks at its head's offset
    heads = tables["offset_heads"].query("flagged and model == 'dino'")
    first = heads.sort_values("strength", ascending=False).iloc[0]
    assert shown[0].get_title().startswith(f"dino L{first['layer']} H{first['head']}")
    for ax in shown:
        model, layer, head = ax.get_title().split("\n")[0].split(" ")
        h = tables["offset_heads"]
        row = h[(h.model == model) & (h.layer == int(layer[1:]))
                & (h["head"] == int(head[1:]))].iloc[0]
        img = ax.images[0].get_array()
        peak = np.unravel_index(np.argmax(img), img.shape)
        assert (peak[0] - 3, peak[1] - 3) == (row["dy"], row["dx"])


def test_best_layer_heatmap_annotations(tables):
    fig = F.fig_best_layer.draw(tables)
    ax = fig.axes[0]
    b = tables["best_layer"].query("variant == 'raw'")
    b = b[(b.metric == b.task.map(T.HEADLINE_METRIC)) & (b.model != "pixels")]
    # low-shot patch and cls rows share (model, task, metric): the better one is shown
    b = b.loc[b.groupby(["model", "task", "dataset", "metric"])["best_value"].idxmax()]
    assert len(b) == 3 * 8
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(b["best_layer"].astype(int))
    # single-layer baselines have no layer to choose and are left out
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dino", "ibot", "mae"]


def test_cka_symmetric_grid(tables):
    fig = F.fig_cka_patch.draw(tables)
    grid = [a for a in fig.axes if a.images]
    assert len(grid) == 9  # 3 deep models, both triangles (lower one transposed)
    m01 = grid[1].images[0].get_array()
    m10 = grid[3].images[0].get_array()
    np.testing.assert_allclose(m01, np.asarray(m10).T)


def test_style_families():
    st = style.model_styles({"a": "contrastive", "b": "mim", "c": "mim", "d": "novel"})
    assert st["a"].color == style.FAMILY_COLORS["contrastive"]
    assert st["b"].color != st["c"].color and st["b"].marker != st["c"].marker
    assert st["d"].color == style.FAMILY_COLORS["other"]
    assert len(set(style.FAMILY_COLORS.values())) == len(style.FAMILY_COLORS)
    assert st == style.model_styles({"d": "novel", "c": "mim", "b": "mim", "a": "contrastive"})


def test_block_axes_have_integer_ticks(tmp_path):
    """With 3 blocks matplotlib's default locator ticks 0, 0.25, 0.5, ...: block axes must not."""
    shallow = {m: dict(e, n_layers=min(e["n_layers"], 3)) for m, e in MODELS.items()}
    tabs = T.load_tables(synthetic_tables(tmp_path / "tables", shallow))
    axes = [ax for fn in (F.fig_instance_id, F.fig_fewshot_seg, F.fig_attention_stats,
                          F.fig_attention_distance) for ax in fn.draw(tabs).axes]
    colorbars = [ax for ax in F.fig_variance_spectra.draw(tabs).axes
                 if ax.get_ylabel() == "block"]
    assert len(axes) >= 8 and len(colorbars) == 3
    for ticks in [ax.get_xticks() for ax in axes] + [ax.get_yticks() for ax in colorbars]:
        inside = ticks[(ticks >= 0) & (ticks <= 2)]
        assert len(inside) >= 2 and np.array_equal(inside, np.round(inside)), ticks


def test_baseline_is_one_reference_line_at_its_raw_score(tables):
    """A single-layer baseline that was also run with drop{m} gets one dotted line per panel,
    at its raw score, not one line per variant."""
    s = tables["scores"]
    raw = s.query("task == 'fewshot_seg' and model == 'pixels'")
    dropped = raw.assign(variant="drop1", value=raw["value"] - 0.1)
    tabs = dict(tables, scores=pd.concat([s, dropped], ignore_index=True))
    want = {F.metric_title(r.metric_label): r.value
            for r in T.overall(raw).itertuples(index=False)}
    colour = style.model_styles({m: e["family"] for m, e in MODELS.items()})["pixels"].color
    fig = F.fig_fewshot_seg.draw(tabs)
    assert sorted(ax.get_title() for ax in fig.axes) == sorted(want)
    for ax in fig.axes:
        ref = [line for line in ax.get_lines() if line.get_color() == colour]
        assert len(ref) == 1 and ref[0].get_linestyle() == ":", ax.get_title()
        np.testing.assert_allclose(ref[0].get_ydata(), want[ax.get_title()])


def test_best_layer_rows_have_a_fixed_height(tmp_path, tables):
    """One model is a strip of the same row height as in a many-model heatmap, not a block."""
    one = T.load_tables(synthetic_tables(tmp_path / "tables",
                                         {m: MODELS[m] for m in ("dino", "pixels")}))
    row = {}
    for n, tabs in ((1, one), (3, tables)):
        fig = F.fig_best_layer.draw(tabs)
        fig.draw_without_rendering()  # run the constrained layout
        heatmap = fig.axes[0]
        assert len(heatmap.get_yticklabels()) == n
        row[n] = heatmap.get_position().height * fig.get_size_inches()[1] / n
    assert row[1] <= 0.35 and row[3] <= 0.35
    assert row[1] == pytest.approx(row[3], rel=0.2)


def test_offset_heads_without_flagged_head_shows_strongest_neighbours(tmp_path):
    """A model with no flagged head still gets its offset-head panel: the heads with the most mass
    one patch away, here a head built to put 0.4 of its mass on the patch to its left."""
    rows = []
    for head, (ly, lx, mass) in enumerate([(0, -1, 0.4), (1, 0, 0.2), (0, 0, 0.0)]):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                v = mass if (dy, dx) == (ly, lx) else (1 - mass) / 8
                rows.append(dict(model="m", layer=0, head=head, dy=dy, dx=dx, value=v))
    maps = pd.DataFrame(rows)
    cand = offset_candidates(maps)
    assert cand.iloc[0][["head", "direction"]].tolist() == [0, "left"]
    assert cand.iloc[0]["strength"] == pytest.approx(0.4)
    heads = pd.DataFrame([dict(model="m", layer=0, head=h, direction="self", dy=0, dx=0,
                               strength=0.1, flagged=False) for h in range(3)])
    tables = {k: T.empty_table(k) for k in T.TABLE_FILES}
    tables.update(offset_heads=heads, offset_maps=maps)
    assert F.FIGURES["offset_heads"].fn(tables, tmp_path / "offset_heads") is not None
    assert (tmp_path / "offset_heads.png").exists()


# ------------------------------------------- on the real producers' output (real_scores.py)
@pytest.fixture(scope="module")
def real_tables(tmp_path_factory):
    from helpers.real_scores import real_tables_dir
    return T.load_tables(real_tables_dir(tmp_path_factory))


def test_final_norm_entry_is_labelled_out(real_tables):
    """The deep model's features carry layer == n_blocks (the final-norm output): the block
    axis labels it 'out', the blocks keep their index."""
    fig = F.fig_tracking.draw(real_tables)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    n = int(real_tables["models"].set_index("model").loc["deep", "n_layers"])
    assert labels[-1] == "out" and labels[:-1] == [str(i) for i in range(n)]
    line = next(l for l in ax.get_lines() if l.get_label() == "Deep (noisy oracle)")
    assert list(line.get_xdata()) == list(range(n + 1))


def test_best_layer_figure_from_the_best_layer_table(real_tables):
    fig = F.fig_best_layer.draw(real_tables)
    ax = fig.axes[0]
    b = real_tables["best_layer"]
    b = b[(b.model == "deep") & (b.variant == "raw") & (b.metric == b.task.map(T.HEADLINE_METRIC))]
    b = b.loc[b.groupby(["task", "dataset", "metric"])["best_value"].idxmax()]
    want = sorted("out" if r.best_layer == r.n_layers else str(r.best_layer)
                  for r in b.itertuples())
    assert sorted(t.get_text() for t in ax.texts) == want and "out" in want
    # the config label names the row, not the key
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Deep (noisy oracle)"]


def test_legends_show_config_labels(real_tables):
    fig = F.fig_fewshot_seg.draw(real_tables)
    texts = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert {"Deep (noisy oracle)", "oracle", "pixels"} <= texts and "deep" not in texts


def test_synthetic_score_rows_have_the_real_evaluators_columns(tables, real_tables):
    """The hand-shaped score rows above (controlled layer curves for the rendering tests) must
    not drift from what the evaluators write: per task the same columns with values (not only
    collect_scores' fill, "" or -1), metric names, and per-item columns with an "all" row."""
    real, synth = real_tables["scores"], tables["scores"]
    assert set(synth.task) == set(real.task)

    def used(df):
        return {c for c in df.columns
                if (~df[c].astype(str).isin(["", "-1", "nan", "<NA>"])).any()}

    for task, r in real.groupby("task"):
        s = synth[synth.task == task]
        assert used(s) == used(r), (task, used(s) ^ used(r))
        assert set(s.metric) <= set(r.metric), task
        for key in ("scale_bin", "sequence", "category"):
            assert ("all" in set(s[key])) == ("all" in set(r[key])), (task, key)
            assert s[key].dtype == r[key].dtype, (task, key)


def test_relative_depth_axis_names_the_out_entry(real_tables):
    """Models of different depth share a relative-depth axis, where the final-norm entry of the
    deep model sits at (n + 1) / n > 1: the axis says so."""
    s = real_tables["scores"]
    # the real deep model's first two blocks, scored again as a 2-block model without a norm entry
    two = s[(s.model == "deep") & (s.layer < 2)].assign(model="two", n_layers=2)
    two["depth_frac"] = (two["layer"] + 1) / 2
    tabs = dict(real_tables, scores=pd.concat([s, two], ignore_index=True), best_layer=None,
                models=pd.concat([real_tables["models"], real_tables["models"].query(
                    "model == 'deep'").assign(model="two", label="two", n_layers=2)],
                    ignore_index=True))
    fig = F.fig_tracking.draw(tabs)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("relative depth") and ax.get_xlabel().endswith("> 1: out")
    deep = next(l for l in ax.get_lines() if l.get_label() == "Deep (noisy oracle)")
    assert max(deep.get_xdata()) == pytest.approx((3 + 1) / 3)
