"""Every figure of the report, drawn from the summary tables only (never from features).

Each figure is one function ``fig_<name>(tables, out_stem) -> Path | None``: ``tables`` maps a
table name of :data:`patchlens.report.tables.TABLE_FILES` to its DataFrame (missing names count as
empty), and the function writes ``out_stem.png`` (200 dpi) and ``out_stem.pdf`` atomically and
returns the PNG path, or returns ``None`` and writes nothing when its tables hold no rows for it
(so a run draws what its data sets support). ``fig_<name>.draw(tables)`` returns the matplotlib
Figure without saving (for tests and notebooks). :data:`FIGURES` is the catalogue
``name -> (function, required tables, caption)``; :func:`make_figures` runs all of it.

Layer axis (decided once for every figure that overlays models): the block index (0-based) when
all overlaid models have the same number of blocks, otherwise the relative depth
``(layer + 1) / n_layers`` (Walmer et al. 2023 compare ViT-S and ViT-B the same way); block-index
axes have integer ticks. Single-layer models (the ``pixels`` baseline, the ``oracle``) have no
depth and are drawn as one horizontal dotted reference line per model and panel, at their
raw-variant score (a baseline is a fixed reference, not one line per feature variant). Per-model
panels (attention distance, variance spectra, CKA) always use the block index. Models keep their
family colour and marker in every figure (see :mod:`patchlens.report.style`). Scores are averaged
over seeds first (``tables.overall``); a band shows ±1 standard deviation over seeds where there
are several.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
from matplotlib import cm, colormaps
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from patchlens.errors import ConfigError
from patchlens.io import atomic_path
from patchlens.report import style
from patchlens.report import tables as T
from patchlens.stats.report import load_tables as stats_tables, with_intervals


class FigureSpec(NamedTuple):
    fn: Callable          # (tables: dict, out_stem) -> Path | None
    tables: tuple         # names of the tables it needs (keys of tables.TABLE_FILES)
    caption: str          # one paragraph, also in report/captions/<name>.rst


FIGURES: dict[str, FigureSpec] = {}

METRIC_TITLES = {"miou_knn": "mIoU (k-NN)", "miou_linear": "mIoU (linear probe)",
                 "top1": "top-1 accuracy", "map": "mAP", "j": "J (region)",
                 "f": "F (boundary)", "jf": "J&F", "acc": "accuracy",
                 "mlmap": "multi-label mAP"}
MAX_OFFSET_PANELS = 24
BEST_DROP = "best drop{m} (m chosen on eval. split)"  # the legend says how m was picked
BEST_LAYER_ROW = 0.3      # in, height of one model row of the best-layer heatmap
BEST_LAYER_MARGIN = 0.7   # in, colour bar above and task labels below it
_BIN_WORDS = ["tiny", "xs", "small", "s", "medium", "m", "large", "l", "xl", "huge"]


def metric_title(label: str) -> str:
    """'miou_knn' -> 'mIoU (k-NN)', 'pck@0.1' -> 'PCK@0.1'; qualifiers kept."""
    m = re.fullmatch(r"([^ ]+)( \(.*\))?", label)
    base, rest = (m.group(1), m.group(2) or "") if m else (label, "")
    if base.startswith("pck@"):
        return "PCK@" + base[4:] + rest
    return METRIC_TITLES.get(base, base) + rest


# ------------------------------------------------------------------------------ infrastructure
def _table(tables: dict, name: str) -> pd.DataFrame:
    df = tables.get(name)
    return df if df is not None else T.empty_table(name)


class _Ctx:
    """Model colours, order and depths, from every table (so they agree across figures)."""

    def __init__(self, tables: dict):
        self.families = T.model_families(tables)
        self.labels = T.model_labels(tables)  # config label: the name in every legend / title
        self.styles = style.model_styles(self.families)
        self.depths = T.model_depths(tables)
        self._order = {m: i for i, m in enumerate(style.model_order(self.families))}

    def order(self, models) -> list[str]:
        return sorted(set(models), key=lambda m: (self._order.get(m, 1 << 30), m))

    def label(self, model: str) -> str:
        return self.labels.get(model, model)

    def color(self, model: str) -> str:
        s = self.styles.get(model)
        return s.color if s else style.family_color(style.DEFAULT_FAMILY)

    def marker(self, model: str) -> str:
        s = self.styles.get(model)
        return s.marker if s else "o"

    def is_flat(self, model: str) -> bool:
        return self.depths.get(model, 2) <= 1

    def layer_axis(self, models) -> tuple[str, str]:
        deep = {self.depths.get(m) for m in models if not self.is_flat(m)}
        if len(deep) <= 1:
            return "layer", "block"
        return "depth_frac", "relative depth (block + 1) / blocks"

    def legend(self, fig: Figure, models, extra: list | None = None) -> None:
        handles = [Line2D([], [], color=self.color(m), label=self.label(m),
                          marker=None if self.is_flat(m) else self.marker(m),
                          linestyle=":" if self.is_flat(m) else "-")
                   for m in self.order(models)]
        handles += extra or []
        if handles:
            fig.legend(handles=handles, loc="outside lower center",
                       ncols=min(len(handles), 6), handlelength=2.2, columnspacing=1.2)


def _save(fig: Figure, out_stem) -> Path:
    out_stem = Path(out_stem)
    png = out_stem.with_name(out_stem.name + ".png")
    pdf = out_stem.with_name(out_stem.name + ".pdf")
    with atomic_path(pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": "patchlens"})
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=style.DPI, metadata={"Software": "patchlens"})
    return png


def _figure(name: str, tables: tuple, caption: str):
    """Register ``draw(tables) -> Figure | None`` as ``fig_<name>(tables, out_stem)``."""
    def deco(draw):
        def fn(tabs: dict, out_stem) -> Path | None:
            with style.context():
                fig = draw(tabs)
                return None if fig is None else _save(fig, out_stem)
        fn.draw = lambda tabs: _drawn(draw, tabs)
        fn.__name__ = fn.__qualname__ = f"fig_{name}"
        fn.__doc__ = draw.__doc__
        FIGURES[name] = FigureSpec(fn, tuple(tables), " ".join(caption.split()))
        return fn
    return deco


def _drawn(draw, tabs):
    with style.context():
        return draw(tabs)


def _new(ncols: int, nrows: int = 1, row_h: float = 1.9, width: float | None = None,
         extra_h: float = 0.45, **kw):
    width = width or (style.SINGLE if ncols == 1 else style.DOUBLE)
    fig = Figure(figsize=(width, row_h * nrows + extra_h))
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return ncols, int(np.ceil(n / ncols))


def _model_panels(df: pd.DataFrame, ctx: _Ctx, **kw):
    """A grid with one panel per (model, data set) of ``df``, models in catalogue order, each
    titled with the model (and the data set when there are several) in the model's colour;
    surplus cells hidden. Returns (figure, axes array, [(ax, model, dataset), ...])."""
    groups = [(m, ds) for m in ctx.order(df["model"])
              for ds in sorted(df.loc[df["model"] == m, "dataset"].unique())]
    ncols, nrows = _grid(len(groups))
    fig, axes = _new(ncols, nrows, extra_h=0.3, **kw)
    multi_ds = df["dataset"].nunique() > 1
    panels = [(ax, m, ds) for ax, (m, ds) in zip(axes.ravel(), groups)]
    for ax, m, ds in panels:
        ax.set_title(ctx.label(m) + (f" — {ds}" if multi_ds else ""), color=ctx.color(m))
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    return fig, axes, panels


def _integer_ticks(axis) -> None:
    """Block indices are integers: no ticks at 0.5 on a short layer axis."""
    axis.set_major_locator(MaxNLocator(integer=True))


def layer_name(layer: int, n_blocks: int) -> str:
    """Block index as text; ``layer == n_blocks`` is the output after the final norm: 'out'."""
    return "out" if int(layer) == int(n_blocks) else str(int(layer))


def _out_ticks(ax, d: pd.DataFrame) -> None:
    """Block-index axis whose models have a final-norm entry (layer == n_layers): integer ticks
    at the blocks, and the last tick labelled 'out' (it is not a block)."""
    if "n_layers" not in d or not len(d) or not (d["layer"] == d["n_layers"]).any():
        _integer_ticks(ax.xaxis)
        return
    n = int(d["n_layers"].max())
    ticks = list(MaxNLocator(integer=True, nbins=6).tick_values(0, n - 1))
    ticks = [int(t) for t in ticks if 0 <= t <= n - 1] + [n]
    ax.set_xticks(ticks, [layer_name(t, n) for t in ticks])


# --------------------------------------------------------------------------- score-vs-layer core
def _lines(ax, d: pd.DataFrame, ctx: _Ctx, x: str, linestyle: str = "-") -> None:
    """One line per (deep) model: value vs ``x`` with a +-std band."""
    for m in ctx.order(d["model"]):
        dm = d[d["model"] == m].sort_values("layer")
        c = ctx.color(m)
        xs, ys, sd = dm[x].to_numpy(float), dm["value"].to_numpy(float), dm["std"].to_numpy(float)
        ax.plot(xs, ys, color=c, marker=ctx.marker(m), linestyle=linestyle, label=ctx.label(m),
                markevery=max(1, len(xs) // 12), markersize=2.5)
        if (sd > 0).any():
            ax.fill_between(xs, ys - sd, ys + sd, color=c, alpha=0.15, linewidth=0)
        if "ci_low" in dm and dm["ci_low"].notna().any():  # 95% bootstrap interval (stats)
            lo, hi = dm["ci_low"].to_numpy(float), dm["ci_high"].to_numpy(float)
            ax.errorbar(xs, ys, yerr=[np.clip(ys - lo, 0, None), np.clip(hi - ys, 0, None)],
                        fmt="none", ecolor=c, elinewidth=0.6, capsize=1.2, alpha=0.8)


def _reference_lines(ax, d: pd.DataFrame, ctx: _Ctx, keys: list) -> None:
    """One dotted horizontal line per single-layer model: its raw-variant score (other variants
    of a baseline are ignored), from the first line-style key in ``keys`` that has rows."""
    for m in ctx.order(d["model"]):
        dm = d[d["model"] == m]
        if "variant" in dm and (dm["variant"] == "raw").any():
            dm = dm[dm["variant"] == "raw"]
        key = next((k for k in keys if (dm["ls"] == k).any()), None)
        if key is None:
            continue
        ax.axhline(dm.loc[dm["ls"] == key, "value"].mean(), color=ctx.color(m), linestyle=":",
                   linewidth=1.0)


def _score_figure(ov: pd.DataFrame, ctx: _Ctx, styles: dict | None = None,
                  suptitle: str = "", titles: dict | None = None,
                  ylabel: str = "score") -> Figure | None:
    """Panels: rows = data sets, columns = ``panel`` labels; ``ls`` column picks the line style
    (keys of ``styles``: label -> linestyle, the first is the solid reference)."""
    if not len(ov):
        return None
    datasets = sorted(ov["dataset"].unique())
    panels = sorted(ov["panel"].unique(), key=panel_key)
    n_handles = ov["model"].nunique() + (len(styles) if styles else 0)
    single = len(panels) == 1 and len(datasets) == 1
    fig, axes = _new(len(panels), len(datasets), extra_h=0.35 + 0.13 * np.ceil(n_handles / 6)
                     + 0.15 * bool(suptitle and not single))
    titles = titles or {}
    x, xlabel = ctx.layer_axis(ov["model"].unique())
    styles = styles or {"": "-"}
    for i, ds in enumerate(datasets):
        for j, p in enumerate(panels):
            ax = axes[i, j]
            d = ov[(ov["dataset"] == ds) & (ov["panel"] == p)]
            flat = d["model"].map(ctx.is_flat).astype(bool)
            for key, ls in styles.items():
                _lines(ax, d[~flat & (d["ls"] == key)], ctx, x, ls)
            _reference_lines(ax, d[flat], ctx, list(styles))
            ax.set_title(titles.get(p, metric_title(p))
                         + (f" — {ds}" if len(datasets) > 1 else ""))
            ax.set_xlabel(xlabel)
            if x == "layer":
                _out_ticks(ax, d[~flat])
            if j == 0:
                ax.set_ylabel(ylabel)
    extra = [Line2D([], [], color="0.3", linestyle=ls, label=k) for k, ls in styles.items()
             if k and (ov["ls"] == k).any()] if len(styles) > 1 else []
    ctx.legend(fig, ov["model"].unique(), extra)
    if single and suptitle:
        axes[0, 0].set_title(f"{suptitle}: {axes[0, 0].get_title()}")
    elif suptitle:
        fig.suptitle(suptitle)
    return fig


def panel_key(label: str):
    """Sort key of metric labels: catalogue order, then PCK alpha, then text."""
    m = re.search(r"pck@([0-9.]+)", label)
    order = list(METRIC_TITLES) + ["entropy", "diversity", "cls_share"]
    base = label.split(" ")[0]
    return (order.index(base) if base in order else len(order),
            float(m.group(1)) if m else 0.0, label)


def _task_overall(tables: dict, task: str) -> pd.DataFrame:
    s = _table(tables, "scores")
    if not len(s):
        return T.overall(s)
    return with_intervals(T.overall(s[s["task"] == task]), s[s["task"] == task])


def _raw_score_figure(tables: dict, task: str, metrics: tuple | None = None) -> Figure | None:
    """Score vs layer of ``task`` on raw features, one panel per metric label (only ``metrics``
    when given), titled with the task's name."""
    ov = _task_overall(tables, task)
    keep = ov["variant"] == "raw"
    if metrics:
        keep &= ov["metric"].isin(metrics)
    ov = ov[keep]
    return _score_figure(ov.assign(panel=ov["metric_label"], ls=""), _Ctx(tables),
                         suptitle=style.TASK_TITLES[task])


# ------------------------------------------------------------------------------------- figures
@_figure("fewshot_seg", ("scores",), """
    Few-shot semantic segmentation mIoU per layer with a cosine k-NN classifier on patch tokens
    (left) and a linear probe (right). Solid: raw features; dashed: the same model after removing
    its best number m of highest-variance channels (drop{m}; m chosen on the evaluation split, so
    the dashed line is optimistic). Dotted horizontal lines: single-layer baselines. Bands: ±1
    s.d. over support-set seeds.
    Error bars: 95% bootstrap interval over the task's units (and seeds; docs/protocols.md).""")
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


@_figure("tracking", ("scores",), """
    Video object segmentation by label propagation (DINO protocol) from each layer's patch tokens:
    J&F mean over objects (all sequences pooled, as the official DAVIS J&F-Mean) per layer.
    Dotted horizontal lines: single-layer baselines.
    Error bars: 95% bootstrap interval over the task's units (and seeds; docs/protocols.md).""")
def fig_tracking(tables):
    """Tracking J&F vs layer (raw features)."""
    return _raw_score_figure(tables, "tracking", metrics=("jf",))


@_figure("instance_id", ("scores",), """
    Instance identification: top-1 accuracy and mAP of retrieving the same object instance among
    distractors of its class, with the mean patch feature of the instance mask, per layer. Error bars: 95% bootstrap interval over the task's units (and seeds; docs/protocols.md#resampling-units).""")
def fig_instance_id(tables):
    """Instance identification top-1 and mAP vs layer (raw features)."""
    return _raw_score_figure(tables, "instance_id")


@_figure("keypoints", ("scores",), """
    Keypoint correspondence: PCK at each threshold alpha (fraction of the target box's longer side)
    of nearest-neighbour matching of upsampled patch features, per layer. Error bars: 95% bootstrap interval over the task's units (and seeds; docs/protocols.md#resampling-units).""")
def fig_keypoints(tables):
    """PCK vs layer, one panel per alpha (raw features)."""
    return _raw_score_figure(tables, "keypoints")


@_figure("lowshot_cls", ("scores",), """
    Low-shot image classification from pooled features per layer: accuracy (multi-class) and
    mAP (multi-label), one panel per number of shots. Solid: mean-pooled patch tokens; dashed:
    the class token. Error bars: 95% bootstrap interval over the task's units (and seeds; docs/protocols.md#resampling-units).""")
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


def _bin_key(b: str):
    s = str(b).lower()
    if s in _BIN_WORDS:
        return (0, _BIN_WORDS.index(s), s)
    m = re.match(r"[^0-9.]*([0-9]*\.?[0-9]+)", s)
    return (1, float(m.group(1)), s) if m else (2, 0.0, s)


@_figure("retrieval_scale", ("scores",), """
    Object retrieval mAP per object-scale bin (smallest objects left), each model at its best
    layer (the layer with the highest overall mAP, from the best-layer table, given in the
    legend).
    Error bars: 95% bootstrap interval over the task's units (and seeds; docs/protocols.md).""")
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


@_figure("drop_sweep", ("scores",), """
    Removing the m highest-variance channels of the patch tokens (drop{m}; m = 0 is raw), per
    model, at the layer where the raw features score best, for each task's primary metric. A
    rising curve marks the few dominant channels Vanyan et al. (2024) find in MAE-style models.""")
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
        ax.set_title(f"{ctx.label(m)} ({ctx.families.get(m, style.DEFAULT_FAMILY)})",
                     color=ctx.color(m))
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


@_figure("variance_spectra", ("variance",), """
    Per-channel variance of the patch tokens, sorted descending, one line per layer (colour =
    block index), log-log. A few channels far above the rest are the high-variance dimensions that
    dominate k-NN distances in MAE-style models (Vanyan et al. 2024).""")
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


def _per_head_figure(tables, metric: str, ylabel: str, from_zero: bool = False):
    """One attention metric of every head (dots) vs layer, one panel per model; the line is the
    mean over heads."""
    a = _table(tables, "attention")
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


@_figure("attention_distance", ("attention",), """
    Mean attention distance (pixels; CLS excluded, rows renormalised) of every head (dots) per
    layer, one panel per model; the line is the mean over heads. Local heads sit low, global heads
    high (Dosovitskiy et al. 2021; Xie et al. 2022).""")
def fig_attention_distance(tables):
    """Per-head attention distance vs layer, scatter, one panel per model."""
    return _per_head_figure(tables, "distance", "attention distance (px)")


@_figure("attention_stats", ("attention",), """
    Attention entropy (mean over heads), head diversity (mean pairwise divergence between the
    heads of a layer) and the attention share given to the CLS token, per layer. Low diversity
    in deep layers marks heads that attend alike (Xie et al. 2022, "Revealing the Dark Secrets of
    MIM").""")
def fig_attention_stats(tables):
    """Entropy / diversity / CLS share vs layer, one line per model."""
    a = _table(tables, "attention")
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


@_figure("offset_heads", ("offset_heads", "offset_maps"), """
    Offset local attention heads: the query-centred average attention map of every head flagged
    as offset (peak one patch from the centre in a fixed direction with a clear share of the
    mass), strongest first within each model; a white cross marks the query patch (Walmer et
    al. 2023, "Teaching Matters"). Where no head passes the thresholds, the heads with the most
    mass on one neighbouring patch are shown instead, and the title says so.""")
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


NEIGHBOURS = {(0, 1): "right", (0, -1): "left", (-1, 0): "up", (1, 0): "down"}


def offset_candidates(maps: pd.DataFrame, per_model: int = 6) -> pd.DataFrame:
    """Per model the ``per_model`` heads with the most attention mass on one of the four
    neighbouring patches of the query: model, layer, head, direction, strength."""
    nb = maps[(maps["dy"].abs() + maps["dx"].abs()) == 1]
    best = nb.sort_values("value", ascending=False, kind="stable").drop_duplicates(
        ["model", "layer", "head"])
    best = best.assign(direction=[NEIGHBOURS[(int(a), int(b))] for a, b in zip(best.dy, best.dx)],
                       strength=best["value"])
    return best.groupby("model").head(per_model)[["model", "layer", "head", "direction",
                                                  "strength"]]


def _cka_figure(tables, level: str):
    c = _table(tables, "cka")
    c = c[c["level"] == level] if len(c) else c
    if not len(c):
        return None
    ctx = _Ctx(tables)
    models = ctx.order(set(c["model_a"]) | set(c["model_b"]))
    n = len(models)
    panel = min(1.6, style.DOUBLE / max(n, 1))
    width = style.SINGLE if n * panel <= style.SINGLE else style.DOUBLE
    fig = Figure(figsize=(width, panel * n + 0.4))
    axes = fig.subplots(n, n, squeeze=False)
    im = None
    for i, ma in enumerate(models):
        for j, mb in enumerate(models):
            ax = axes[i, j]
            ax.grid(False)
            mat = _cka_matrix(c, ma, mb)
            if mat is None:
                ax.set_axis_off()
                continue
            im = ax.imshow(mat.to_numpy(), origin="lower", vmin=0, vmax=1, cmap="magma",
                           interpolation="nearest", aspect="auto")
            ax.set_xticks([0, mat.shape[1] - 1], [mat.columns[0], mat.columns[-1]])
            ax.set_yticks([0, mat.shape[0] - 1], [mat.index[0], mat.index[-1]])
            ax.tick_params(labelsize=5, length=1.5, pad=1)
            if i == n - 1:
                ax.set_xlabel(ctx.label(mb), color=ctx.color(mb), fontsize=6)
            if j == 0:
                ax.set_ylabel(ctx.label(ma), color=ctx.color(ma), fontsize=6)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="linear CKA")
    fig.suptitle(f"CKA between layers ({level} tokens)" if level == "patch"
                 else f"CKA between layers ({level} features)")
    return fig


def _cka_matrix(c: pd.DataFrame, ma: str, mb: str) -> pd.DataFrame | None:
    """layer_a x layer_b matrix of the pair, from (ma, mb) rows or transposed (mb, ma) rows."""
    d = c[(c["model_a"] == ma) & (c["model_b"] == mb)]
    if len(d):
        return d.pivot_table(index="layer_a", columns="layer_b", values="value", aggfunc="mean")
    d = c[(c["model_a"] == mb) & (c["model_b"] == ma)]
    if len(d):
        return d.pivot_table(index="layer_b", columns="layer_a", values="value", aggfunc="mean")
    return None


@_figure("cka_patch", ("cka",), """
    Linear CKA (unbiased minibatch HSIC, Nguyen et al. 2021) between the patch tokens of every
    pair of layers: row model's layers (vertical) against column model's layers (horizontal);
    within-model maps on the diagonal (Raghu et al. 2021).""")
def fig_cka_patch(tables):
    """Layer x layer CKA heatmaps per model pair, patch tokens."""
    return _cka_figure(tables, "patch")


@_figure("cka_image", ("cka",), """
    Linear CKA between the pooled image features of every pair of layers, laid out as the patch
    version: row model's layers (vertical) against column model's layers (horizontal).""")
def fig_cka_image(tables):
    """Layer x layer CKA heatmaps per model pair, pooled image features."""
    return _cka_figure(tables, "image")


@_figure("token_norms", ("token_norms",), """
    High-norm patch tokens (Darcet et al. 2024, "Vision Transformers Need Registers") per layer,
    from the stored features: the largest patch-token norm over the median (left), the share of
    tokens above k times the layer's median norm (middle; one line style per k) and, for the
    middle threshold, the share of those tokens on the border of the patch grid (right; grey
    dotted: the border's share of all tokens, the chance level).""")
def fig_token_norms(tables):
    """Max/median norm, share of high-norm tokens and their border share vs layer."""
    t = tables.get("token_norms")
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


@_figure("best_layer", ("best_layer",), """
    Best layer per model and task (primary metric, raw features): colour is the relative depth
    (block + 1) / blocks of the best layer, the number its block index ("out": the output after
    the model's final norm). The best layer depends on the task and on the supervision (Walmer
    et al. 2023).""")
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


@_figure("attention_offset", ("attention",), """
    Average attention offset of every head (dots) per layer, one panel per model; the line is the
    mean over heads: the length of the centroid of the head's query-aligned average attention map,
    in the unit canvas where a whole grid side is 1 (Walmer et al. 2023, "Teaching Matters",
    Sec. 4.1). Heads that attend to a fixed neighbour sit above 0; heads centred on their query sit
    at 0.""")
def fig_attention_offset(tables):
    """Per-head average attention offset vs layer, scatter, one panel per model."""
    return _per_head_figure(tables, "avg_offset", "average attention offset", from_zero=True)


@_figure("cka_tokens_ln", ("cka",), """
    Linear CKA in Teaching Matters' setting (Walmer et al. 2023; analyses.cka.params.mode:
    teaching_matters): LayerNorm-normalised tokens of each block, all tokens of an image
    flattened as one sample, min-max scaled minibatch Grams, unbiased HSIC; laid out as the
    patch version: row model's layers (vertical) against column model's layers (horizontal).""")
def fig_cka_tokens_ln(tables):
    """Layer x layer CKA heatmaps per model pair, Teaching Matters' setting."""
    return _cka_figure(tables, "tokens_ln")


# ------------------------------------------------------------------------------------ drivers
def make_figure(name: str, tables: dict, out_dir) -> Path | None:
    """Draw catalogue figure ``name`` into ``out_dir/name.{png,pdf}``; stale files of a figure
    that has no data now are removed, so the report never shows an old result."""
    if name not in FIGURES:
        raise ConfigError(f"figure {name!r}: not in the catalogue ({', '.join(FIGURES)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = FIGURES[name].fn(tables, out / name)
    if png is None:
        for ext in (".png", ".pdf"):
            (out / f"{name}{ext}").unlink(missing_ok=True)
    return png


def make_figures(tables_dir, out_dir, names=None) -> list[Path]:
    """Run the catalogue (or ``names``) on the tables in ``tables_dir``; returns the PNG and PDF
    paths written (figures without data write nothing and lose stale files)."""
    tables = {**T.load_tables(tables_dir), **stats_tables(tables_dir)}
    written = []
    for name in names or FIGURES:
        png = make_figure(name, tables, out_dir)
        if png is not None:
            written += [png, png.with_suffix(".pdf")]
    return written
