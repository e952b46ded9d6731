"""Every figure of the report, drawn from the summary tables only (never from features).

Each figure is one function ``fig_<name>(tables, out_stem) -> Path | None``: ``tables`` maps a
table name of :data:`patchlens.report.tables.TABLE_FILES` to its DataFrame (missing names count as
empty), and the function writes ``out_stem.png`` (200 dpi) and ``out_stem.pdf`` atomically and
returns the PNG path, or returns ``None`` and writes nothing when its tables hold no rows for it
(so a run draws what its data sets support). ``fig_<name>.draw(tables)`` returns the matplotlib
Figure without saving (for tests and notebooks). :data:`FIGURES` is the catalogue
``name -> (function, required tables, caption)``; :func:`make_figures` runs all of it. The
captions are ``report/captions/<name>.rst``.

Modules: :mod:`.core` (registry, save and layout helpers, score-vs-layer core), :mod:`.scores`
(task figures), :mod:`.overview` (variance spectra, token norms, best layer), :mod:`.attention`
and :mod:`.cka`.

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

from pathlib import Path

from patchlens.errors import ConfigError
from patchlens.report import tables as T
from patchlens.report.figures import attention, cka, overview, patch_pca, scores  # noqa: F401
from patchlens.report.figures.attention import (fig_attention_distance, fig_attention_offset,
                                                fig_attention_stats, fig_offset_heads)
from patchlens.report.figures.cka import fig_cka_image, fig_cka_patch, fig_cka_tokens_ln
from patchlens.report.figures.core import (FIGURES, MAX_OFFSET_PANELS, FigureSpec, layer_name,
                                           metric_title, panel_key, read_caption)
from patchlens.report.figures.patch_pca import fig_patch_pca
from patchlens.report.figures.overview import (fig_best_layer, fig_token_norms,
                                               fig_variance_spectra)
from patchlens.report.figures.scores import (fig_drop_sweep, fig_fewshot_seg, fig_instance_id,
                                             fig_keypoints, fig_lowshot_cls,
                                             fig_retrieval_scale, fig_tracking)
from patchlens.report.statistics import load_tables as stats_tables

__all__ = ["FIGURES", "FigureSpec", "MAX_OFFSET_PANELS", "layer_name", "make_figure",
           "make_figures", "metric_title", "panel_key", "read_caption",
           "fig_attention_distance", "fig_attention_offset", "fig_attention_stats",
           "fig_offset_heads", "fig_cka_image", "fig_cka_patch", "fig_cka_tokens_ln",
           "fig_best_layer", "fig_token_norms", "fig_variance_spectra", "fig_drop_sweep",
           "fig_fewshot_seg", "fig_instance_id", "fig_keypoints", "fig_lowshot_cls",
           "fig_retrieval_scale", "fig_tracking", "fig_patch_pca"]


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
