"""CKA figures: layer x layer heatmaps per model pair (patch, image, Teaching Matters)."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from patchlens.analysis.specs import CKA
from patchlens.report import style
from patchlens.report.figures.core import (_Ctx, _figure, _table)


def _cka_figure(tables, level: str):
    c = _table(tables, CKA.name)
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


@_figure("cka_patch", (CKA.name,))
def fig_cka_patch(tables):
    """Layer x layer CKA heatmaps per model pair, patch tokens."""
    return _cka_figure(tables, "patch")


@_figure("cka_image", (CKA.name,))
def fig_cka_image(tables):
    """Layer x layer CKA heatmaps per model pair, pooled image features."""
    return _cka_figure(tables, "image")



@_figure("cka_tokens_ln", (CKA.name,))
def fig_cka_tokens_ln(tables):
    """Layer x layer CKA heatmaps per model pair, Teaching Matters' setting."""
    return _cka_figure(tables, "tokens_ln")
