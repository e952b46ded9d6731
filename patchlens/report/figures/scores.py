"""Score figures: one score-vs-layer figure per task, retrieval by scale and the drop sweep."""
from __future__ import annotations

import re
import textwrap

import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from patchlens.report import style
from patchlens.report import tables as T
from patchlens.report.figures.core import (BEST_DROP, _BIN_WORDS, _Ctx, _figure, _grid, _new,
                                           _raw_score_figure, _score_figure, _table, _task_overall,
                                           layer_name, metric_title)
from patchlens.report.statistics import with_intervals


@_figure("fewshot_seg", ("scores",))
def fig_fewshot_seg(tables):
    """mIoU vs layer, k-NN and linear panels; raw solid, best drop{m} dashed."""
    ov = _task_overall(tables, "fewshot_seg")
    if not len(ov):
        return None
    raw = ov[ov["variant"] == "raw"].assign(ls="raw")
    best = T.best_drop_variant(ov)
    key = ["task", "model", "dataset", "metric_label", "variant"]
    drop = ov.merge(best[key], on=key).assign(ls=BEST_DROP)
    d = pd.concat([raw, drop], ignore_index=True)
    d["panel"] = d["metric_label"]
    return _score_figure(d, _Ctx(tables), {"raw": "-", BEST_DROP: "--"},
                         "Few-shot segmentation")


@_figure("tracking", ("scores",))
def fig_tracking(tables):
    """Tracking J&F vs layer (raw features)."""
    return _raw_score_figure(tables, "tracking", metrics=("jf",))


@_figure("hummingbird", ("scores",))
def fig_hummingbird(tables):
    """Hummingbird dense retrieval mIoU vs layer (raw features)."""
    return _raw_score_figure(tables, "hummingbird", metrics=("miou",))


@_figure("instance_id", ("scores",))
def fig_instance_id(tables):
    """Instance identification top-1 and mAP vs layer (raw features)."""
    return _raw_score_figure(tables, "instance_id")


@_figure("keypoints", ("scores",))
def fig_keypoints(tables):
    """PCK vs layer, one panel per alpha (raw features)."""
    return _raw_score_figure(tables, "keypoints")


@_figure("lowshot_cls", ("scores",))
def fig_lowshot_cls(tables):
    """Low-shot accuracy / multi-label mAP vs layer; patch solid, CLS dashed."""
    s = _table(tables, "scores")
    if not len(s):
        return None
    s = s[(s["task"] == "lowshot_cls") & (s["variant"] == "raw")]
    if not len(s):
        return None
    s = s.assign(feature=s["feature"].replace("", "patch"))
    # panels per metric and shots; the feature (patch / cls) becomes the line style
    ov = pd.concat([with_intervals(T.overall(d.assign(feature="")), d.assign(feature=""))
                    .assign(ls=feat)
                    for feat, d in s.groupby("feature")], ignore_index=True)
    ov["panel"] = ov["metric_label"]
    return _score_figure(ov, _Ctx(tables), {"patch": "-", "cls": "--"},
                         "Low-shot classification")


@_figure("depth", ("scores",))
def fig_depth(tables):
    """Depth delta < 1.25, AbsRel and RMSE vs layer (raw features)."""
    return _raw_score_figure(tables, "depth", metrics=("delta1", "absrel", "rmse"))


def _bin_key(b: str):
    s = str(b).lower()
    if s in _BIN_WORDS:
        return (0, _BIN_WORDS.index(s), s)
    m = re.match(r"[^0-9.]*([0-9]*\.?[0-9]+)", s)
    return (1, float(m.group(1)), s) if m else (2, 0.0, s)


@_figure("retrieval_scale", ("scores",))
def fig_retrieval_scale(tables):
    """Retrieval mAP vs object scale bin at each model's best layer (raw features)."""
    s = _table(tables, "scores")
    if not len(s):
        return None
    s = s[(s["task"] == "retrieval") & (s["variant"] == "raw") & (s["metric"] == "map")]
    s = s[s["scale_bin"] != T.OVERALL]
    if not len(s) or (s["scale_bin"] == "").all():
        return None
    ctx = _Ctx(tables)
    sc = _table(tables, "scores")
    best = T.best_layer_rows(sc[(sc["task"] == "retrieval") & (sc["variant"] == "raw")
                                & (sc["metric"] == "map")])[["model", "dataset", "best_layer"]]
    cols = ["value"] + [c for c in ("ci_low", "ci_high") if c in s]
    per_bin = (s.merge(best, on=["model", "dataset"]).query("layer == best_layer")
               .groupby(["model", "dataset", "best_layer", "n_layers", "scale_bin"])[cols]
               .mean()
               .reset_index())
    datasets = sorted(per_bin["dataset"].unique())
    fig, axes = _new(len(datasets), extra_h=0.6)
    handles = {}
    for ax, ds in zip(axes[0], datasets):
        d = per_bin[per_bin["dataset"] == ds]
        bins = sorted(d["scale_bin"].unique(), key=_bin_key)
        pos = {b: i for i, b in enumerate(bins)}
        for m in ctx.order(d["model"]):
            dm = d[d["model"] == m].sort_values("scale_bin", key=lambda c: c.map(pos))
            layer = layer_name(dm["best_layer"].iloc[0], dm["n_layers"].iloc[0])
            lab = ctx.label(m) if ctx.is_flat(m) else f"{ctx.label(m)} (L{layer})"
            (h,) = ax.plot(dm["scale_bin"].map(pos), dm["value"], color=ctx.color(m),
                           marker=ctx.marker(m), linestyle=":" if ctx.is_flat(m) else "-",
                           label=lab)
            handles.setdefault(lab, h)
            if "ci_low" in dm and (dm["ci_low"] >= 0).all():  # 95% bootstrap interval
                y = dm["value"].to_numpy(float)
                ax.errorbar(dm["scale_bin"].map(pos), y, fmt="none", ecolor=ctx.color(m),
                            yerr=[np.clip(y - dm["ci_low"], 0, None),
                                  np.clip(dm["ci_high"] - y, 0, None)],
                            elinewidth=0.6, capsize=1.2, alpha=0.8)
        ax.set_xticks(range(len(bins)), bins)
        ax.set_xlabel("object scale bin")
        ax.set_ylabel("mAP")
        ax.set_title(f"Object retrieval — {ds}")
    fig.legend(handles=list(handles.values()), loc="outside lower center",
               ncols=min(len(handles), 4))
    return fig


@_figure("drop_sweep", ("scores",))
def fig_drop_sweep(tables):
    """Score vs m (channels removed) at the best raw layer, one panel per model."""
    ov = T.headline(_table_overall_all(tables))
    if not len(ov):
        return None
    ov = ov.assign(m=ov["variant"].map(T.drop_m))
    ov = ov[ov["m"].notna()]
    models = [m for m in ov["model"].unique() if (ov.loc[ov["model"] == m, "m"] > 0).any()]
    if not models:
        return None
    ctx = _Ctx(tables)
    models = ctx.order(models)
    key = ["task", "model", "dataset", "metric_label"]
    sc = _table(tables, "scores")
    best = T.best_layer_rows(sc[sc["variant"] == "raw"])[key + ["best_layer"]]
    ncols, nrows = _grid(len(models))
    fig, axes = _new(ncols, nrows, extra_h=0.55)
    handles = {}
    for ax, m in zip(axes.ravel(), models):
        d = ov[ov["model"] == m].merge(best, on=key)
        d = d[d["layer"] == d["best_layer"]]
        for (task, ds, lab), dl in d.groupby(["task", "dataset", "metric_label"]):
            if not (dl["m"] > 0).any():
                continue  # this task was not run with drop{m} for this model
            dl = dl.sort_values("m")
            name = f"{style.TASK_TITLES.get(task, task)}: {metric_title(lab)}"
            if d["dataset"].nunique() > 1:
                name += f" ({ds})"
            (h,) = ax.plot(dl["m"], dl["value"], marker="o",
                           color=style.TASK_COLORS.get(task, "0.3"), label=name)
            handles.setdefault(name, h)
        title = f"{ctx.label(m)} ({ctx.families.get(m, style.DEFAULT_FAMILY)})"
        ax.set_title(textwrap.fill(title, 28), color=ctx.color(m))  # long labels: several lines
        ax.set_xscale("symlog", linthresh=1)
        ms = sorted({int(v) for line in ax.get_lines() for v in line.get_xdata()})
        ax.set_xticks(ms, [str(v) for v in ms])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("channels removed m")
        ax.set_ylabel("score at best raw layer")
    for ax in axes.ravel()[len(models):]:
        ax.set_visible(False)
    fig.legend(handles=list(handles.values()), loc="outside lower center",
               ncols=min(len(handles), 3))
    return fig


def _table_overall_all(tables):
    s = _table(tables, "scores")
    return T.overall(s) if len(s) else T.overall(None)
