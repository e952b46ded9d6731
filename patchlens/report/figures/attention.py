"""Attention figures: per-head distance, statistics and average offset; offset local heads."""
from __future__ import annotations

import pandas as pd

from patchlens.analysis.offset_heads import offset_candidates
from patchlens.analysis.specs import ATTENTION
from patchlens.report import style
from patchlens.report import tables as T
from patchlens.report.figures.core import (MAX_OFFSET_PANELS, _Ctx, _figure, _grid, _integer_ticks,
                                           _model_panels, _new, _score_figure, _table)


def _per_head_figure(tables, metric: str, ylabel: str, from_zero: bool = False):
    """One attention metric of every head (dots) vs layer, one panel per model; the line is the
    mean over heads."""
    a = _table(tables, ATTENTION.name)
    a = a[a["metric"] == metric] if len(a) else a
    if not len(a):
        return None
    ctx = _Ctx(tables)
    fig, axes, panels = _model_panels(a, ctx, sharey=True)
    for ax, m, ds in panels:
        d = a[(a["model"] == m) & (a["dataset"] == ds) & (a["head"] >= 0)]
        ax.scatter(d["layer"], d["value"], s=4, color=ctx.color(m), alpha=0.6, linewidths=0)
        mean = d.groupby("layer")["value"].mean()
        ax.plot(mean.index, mean.to_numpy(), color="0.15", linewidth=0.8)
        ax.set_xlabel("block")
        _integer_ticks(ax.xaxis)
        if from_zero:
            ax.set_ylim(bottom=0)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    return fig


@_figure("attention_distance", (ATTENTION.name,))
def fig_attention_distance(tables):
    """Per-head attention distance vs layer, scatter, one panel per model."""
    return _per_head_figure(tables, "distance", "attention distance (px)")


@_figure("attention_stats", (ATTENTION.name,))
def fig_attention_stats(tables):
    """Entropy / diversity / CLS share vs layer, one line per model."""
    a = _table(tables, ATTENTION.name)
    if not len(a):
        return None
    parts = []
    for metric in ("entropy", "diversity", "cls_share"):
        d = a[a["metric"] == metric]
        d = d[d["head"] == -1] if metric == "diversity" else d[d["head"] >= 0]
        if len(d):
            parts.append(d.groupby(["model", "dataset", "layer"])["value"]
                         .agg(value="mean").reset_index().assign(panel=metric))
    if not parts:
        return None
    ov = pd.concat(parts, ignore_index=True)
    ctx = _Ctx(tables)
    depth = ov["model"].map(ctx.depths).fillna(ov.groupby("model")["layer"].transform("max") + 1)
    ov = ov.assign(std=0.0, ls="", depth_frac=(ov["layer"] + 1) / depth)
    return _score_figure(ov, ctx, suptitle="Attention statistics", ylabel="",
                         titles={"entropy": "entropy (mean over heads)",
                                 "diversity": "head diversity", "cls_share": "CLS share"})


@_figure("offset_heads", ("offset_heads", "offset_maps"))
def fig_offset_heads(tables):
    """Grid of the flagged heads' centred attention maps."""
    h, maps = _table(tables, "offset_heads"), _table(tables, "offset_maps")
    if not len(h) or not len(maps):
        return None
    flagged = h[T.flag_mask(h["flagged"])]
    keys = ["model", "layer", "head"]
    flagged = flagged.merge(maps[keys].drop_duplicates(), on=keys)
    note = None
    if not len(flagged):
        flagged = offset_candidates(maps)
        note = "no head passes the offset thresholds: strongest one-patch neighbours"
        if not len(flagged):
            return None
    n_all = len(flagged)
    ctx = _Ctx(tables)
    flagged = flagged.sort_values("strength", ascending=False).head(MAX_OFFSET_PANELS)
    rank = {m: i for i, m in enumerate(ctx.order(flagged["model"]))}
    flagged = flagged.assign(_r=flagged["model"].map(rank)).sort_values(
        ["_r", "strength", "layer", "head"], ascending=[True, False, True, True])
    ncols, nrows = _grid(len(flagged), 6)
    fig, axes = _new(ncols, nrows, row_h=1.2, width=style.DOUBLE if ncols > 2 else style.SINGLE,
                     extra_h=0.25)
    for ax, (_, r) in zip(axes.ravel(), flagged.iterrows()):
        d = maps[(maps["model"] == r["model"]) & (maps["layer"] == r["layer"])
                 & (maps["head"] == r["head"])]
        grid = d.pivot_table(index="dy", columns="dx", values="value", aggfunc="mean")
        dy, dx = grid.index.to_numpy(), grid.columns.to_numpy()
        ax.imshow(grid.to_numpy(), origin="upper", interpolation="nearest",
                  extent=(dx.min() - 0.5, dx.max() + 0.5, dy.max() + 0.5, dy.min() - 0.5))
        ax.plot([0], [0], marker="+", color="white", markersize=5, markeredgewidth=0.8)
        ax.set_title(f"{ctx.label(r['model'])} L{int(r['layer'])} H{int(r['head'])}\n"
                     f"{r['direction']} "
                     f"{float(r['strength']):.2f}", color=ctx.color(r["model"]), fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    for ax in axes.ravel()[len(flagged):]:
        ax.set_visible(False)
    if note:
        fig.suptitle(note)
    elif n_all > len(flagged):
        fig.suptitle(f"{len(flagged)} strongest of {n_all} offset heads")
    return fig



@_figure("attention_offset", (ATTENTION.name,))
def fig_attention_offset(tables):
    """Per-head average attention offset vs layer, scatter, one panel per model."""
    return _per_head_figure(tables, "avg_offset", "average attention offset", from_zero=True)
