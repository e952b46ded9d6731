"""Core of the figure catalogue: the registry :data:`FIGURES`, the ``_figure`` decorator, the
save and layout helpers, the model context ``_Ctx`` and the score-vs-layer figure shared by the
task figures. The conventions every figure follows are in :mod:`patchlens.report.figures`.

Captions: one paragraph of reStructuredText per figure in ``report/captions/<name>.rst``, the
single source that Snakemake's report (``rules/common.smk: figure_captions``) and the HTML report
(``FIGURES[name].caption``) both read.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from patchlens.errors import ConfigError
from patchlens.io import atomic_path
from patchlens.report import style
from patchlens.report import tables as T
from patchlens.report import models as RM
from patchlens.report.statistics import with_intervals


class FigureSpec(NamedTuple):
    fn: Callable          # (tables: dict, out_stem) -> Path | None
    tables: tuple         # names of the tables it needs (keys of tables.TABLE_FILES)
    caption: str          # one paragraph, read from report/captions/<name>.rst


FIGURES: dict[str, FigureSpec] = {}
CAPTIONS_DIR = Path(__file__).resolve().parents[3] / "report" / "captions"


def read_caption(name: str, captions_dir=None) -> str:
    """The caption of figure ``name``: ``report/captions/<name>.rst``, whitespace collapsed."""
    path = Path(captions_dir or CAPTIONS_DIR) / f"{name}.rst"
    if not path.is_file():
        raise ConfigError(f"figure {name!r}: caption file {path} missing; write one paragraph "
                          f"describing the figure there")
    return " ".join(path.read_text().split())

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
        self.families = RM.model_families(tables)
        self.labels = RM.model_labels(tables)  # config label: the name in every legend / title
        self.styles = style.model_styles(self.families)
        self.depths = RM.model_depths(tables)
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
            fig.legend(handles=handles, loc="outside lower center", ncols=_legend_columns(handles),
                       handlelength=2.2, columnspacing=1.2)


def _legend_columns(handles, max_cols: int = 6, row_chars: int = 120) -> int:
    """Columns of a figure legend: as many as fit one row of about ``row_chars`` characters of
    labels (long model labels would otherwise run off the figure)."""
    widths = sorted((len(h.get_label()) + 6 for h in handles), reverse=True)
    n = min(len(handles), max_cols)
    while n > 1 and sum(widths[:n]) > row_chars:
        n -= 1
    return n


def _save(fig: Figure, out_stem) -> Path:
    out_stem = Path(out_stem)
    png = out_stem.with_name(out_stem.name + ".png")
    pdf = out_stem.with_name(out_stem.name + ".pdf")
    with atomic_path(pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": "patchlens"})
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=style.DPI, metadata={"Software": "patchlens"})
    return png


def _figure(name: str, tables: tuple):
    """Register ``draw(tables) -> Figure | None`` as ``fig_<name>(tables, out_stem)``, captioned
    by ``report/captions/<name>.rst``."""
    def deco(draw):
        def fn(tabs: dict, out_stem) -> Path | None:
            with style.context():
                fig = draw(tabs)
                return None if fig is None else _save(fig, out_stem)
        fn.draw = lambda tabs: _drawn(draw, tabs)
        fn.__name__ = fn.__qualname__ = f"fig_{name}"
        fn.__doc__ = draw.__doc__
        FIGURES[name] = FigureSpec(fn, tuple(tables), read_caption(name))
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
            elif "n_layers" in d and (d["layer"] == d["n_layers"])[~flat].any():
                ax.set_xlabel(f"{xlabel}; > 1: out")  # the final-norm entry, (n + 1) / n
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
