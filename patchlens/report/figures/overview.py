"""Overview figures: channel variance spectra, high-norm tokens and the best layer per task."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import cm, colormaps, colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from patchlens.analysis.specs import TOKEN_NORMS
from patchlens.report import style
from patchlens.report import tables as T
from patchlens.report.figures.core import (BEST_LAYER_MARGIN, BEST_LAYER_ROW, _Ctx, _figure,
                                           _integer_ticks, _model_panels, _new, _table, layer_name)


@_figure("variance_spectra", ("variance",))
def fig_variance_spectra(tables):
    """Sorted channel variances per layer, one panel per model (and data set)."""
    v = _table(tables, "variance")
    if not len(v):
        return None
    ctx = _Ctx(tables)
    fig, _, panels = _model_panels(v, ctx)
    cmap = colormaps["viridis"]
    for ax, m, ds in panels:
        d = v[(v["model"] == m) & (v["dataset"] == ds)]
        layers = sorted(d["layer"].unique())
        top = max(layers) if layers else 1
        for layer in layers:
            dl = d[d["layer"] == layer].sort_values("rank")
            ax.plot(dl["rank"] + 1, np.maximum(dl["variance"], 1e-12),
                    color=cmap(layer / max(top, 1)),
                    linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("channel rank")
        ax.set_ylabel("variance")
        sm = cm.ScalarMappable(
            cmap=cmap, norm=mcolors.Normalize(0, max(top, 1)))
        cb = fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.06)
        cb.set_label("block", fontsize=6)
        _integer_ticks(cb.ax.yaxis)
        cb.ax.tick_params(labelsize=5)
    return fig



@_figure(TOKEN_NORMS.name, (TOKEN_NORMS.name,))
def fig_token_norms(tables):
    """Max/median norm, share of high-norm tokens and their border share vs layer."""
    t = tables.get(TOKEN_NORMS.name)
    if t is None or not len(t):
        return None
    ctx = _Ctx(tables)
    ks = sorted(t["threshold"].dropna().unique())
    k_mid = ks[len(ks) // 2] if ks else None
    x, xlabel = ctx.layer_axis(t["model"].unique())
    fig, axes = _new(3, extra_h=0.35 + 0.13 * np.ceil((t["model"].nunique() + len(ks)) / 6))
    styles = dict(zip(ks, ["-", "--", ":", "-."] * 4))
    for m in ctx.order(t["model"]):
        d = t[t["model"] == m]
        if x == "depth_frac":
            d = d.assign(depth_frac=(d["layer"] + 1) / ctx.depths.get(m, d["layer"].max() + 1))
        piv = d[d["threshold"].isna()].pivot_table(index=x, columns="statistic", values="value")
        if {"norm_q1", "norm_median"} <= set(piv.columns):
            axes[0, 0].plot(piv.index, piv["norm_q1"] / piv["norm_median"], color=ctx.color(m),
                            marker=ctx.marker(m), markersize=2.5)
        for k in ks:
            dk = d[d["threshold"] == k].pivot_table(index=x, columns="statistic", values="value")
            if "frac_high" in dk:
                axes[0, 1].plot(dk.index, dk["frac_high"], color=ctx.color(m),
                                linestyle=styles[k], marker=ctx.marker(m), markersize=2.5)
            if k == k_mid and "border_high" in dk:
                axes[0, 2].plot(dk.index, dk["border_high"], color=ctx.color(m),
                                marker=ctx.marker(m), markersize=2.5)
            if k == k_mid and "border_all" in dk:
                axes[0, 2].plot(dk.index, dk["border_all"], color="0.6", linestyle=":")
    if k_mid is not None and not (t[t["threshold"] == k_mid]["statistic"].eq("border_high")
                                  & t["value"].notna()).any():
        axes[0, 2].text(0.5, 0.5, "no high-norm token", transform=axes[0, 2].transAxes,
                        ha="center", va="center", color="0.4")
    for ax, title in zip(axes[0], ["max / median norm", "share of tokens > k x median",
                                   f"border share (k = {k_mid:g})" if k_mid else "border"]):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if x == "layer":
            _integer_ticks(ax.xaxis)
    extra = [Line2D([], [], color="0.3", linestyle=styles[k], label=f"k = {k:g}") for k in ks]
    ctx.legend(fig, t["model"].unique(), extra)
    return fig


@_figure("best_layer", ("best_layer",))
def fig_best_layer(tables):
    """Heatmap models x tasks, colour = depth_frac, annotated with the best block."""
    b = _table(tables, "best_layer")
    if not len(b):
        return None
    if (b["variant"] == "raw").any():
        b = b[b["variant"] == "raw"]
    keep = []
    for task, d in b.groupby("task"):
        want = T.HEADLINE_METRIC.get(task)
        keep.append(d[d["metric"] == (want if want in set(d["metric"]) else
                                      sorted(d["metric"].unique())[0])])
    b = pd.concat(keep, ignore_index=True)
    # rows the table cannot tell apart (e.g. low-shot patch / cls): the highest-scoring one
    b = b.sort_values("best_value", ascending=False, kind="stable").drop_duplicates(
        ["model", "task", "dataset", "metric"])
    ctx = _Ctx(tables)
    b = b[~b["model"].map(ctx.is_flat)]  # a single-layer baseline has no layer to choose
    if not len(b):
        return None
    cols = sorted({(t, ds, mt) for t, ds, mt in zip(b["task"], b["dataset"], b["metric"])},
                  key=lambda k: (T.TASK_ORDER.index(k[0]) if k[0] in T.TASK_ORDER else 99, k))
    models = ctx.order(b["model"])
    frac = np.full((len(models), len(cols)), np.nan)
    layer = np.full((len(models), len(cols)), -1)
    blocks = np.full((len(models), len(cols)), -1)
    ri, ci = {m: i for i, m in enumerate(models)}, {k: j for j, k in enumerate(cols)}
    for r in b.itertuples(index=False):
        i, j = ri[r.model], ci[(r.task, r.dataset, r.metric)]
        frac[i, j], layer[i, j] = min(float(r.depth_frac), 1.0), int(r.best_layer)
        blocks[i, j] = int(r.n_layers)
    width = style.SINGLE if len(cols) <= 4 else style.DOUBLE
    multi_ds = len({c[1] for c in cols}) > 1
    # fixed row height: one model is a strip, not a block stretched to a minimum figure height
    margins = BEST_LAYER_MARGIN + 0.1 * multi_ds
    fig = Figure(figsize=(width, margins + BEST_LAYER_ROW * len(models)))
    ax = fig.subplots()
    ax.grid(False)
    cmap = colormaps["viridis"].with_extremes(bad="0.9")
    im = ax.imshow(np.ma.masked_invalid(frac), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(models)):
        for j in range(len(cols)):
            if layer[i, j] >= 0:
                ax.text(j, i, layer_name(layer[i, j], blocks[i, j]), ha="center", va="center",
                        fontsize=6,
                        color="white" if frac[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(cols)), [
        style.TASK_TITLES.get(t, t).replace(" ", "\n", 1) + ("\n" + ds if multi_ds else "")
        for t, ds, _ in cols], fontsize=5.5)
    ax.set_yticks(range(len(models)), [ctx.label(m) for m in models])
    for tick, m in zip(ax.get_yticklabels(), models):
        tick.set_color(ctx.color(m))
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    cb = fig.colorbar(im, ax=ax, location="top", shrink=0.5, aspect=40, pad=0.02)
    cb.set_label("relative depth of the best layer", fontsize=6)
    cb.ax.tick_params(labelsize=5, length=1.5)
    return fig
