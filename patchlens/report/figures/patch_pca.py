"""The patch-view figure: the first three principal components of the patch features as RGB, per
model and layer, beside the image (table ``patch_pca``, written by the rule patch_pca from the
feature files: :func:`patchlens.report.patch_pca.patch_pca_table`)."""
from __future__ import annotations

import numpy as np

from patchlens.report.figures.core import _Ctx, _figure, _new, _table, layer_name


def _grid(d, shape) -> np.ndarray:
    """(rows, cols, 3) image of table rows ``d`` (row, col, r, g, b)."""
    out = np.zeros((*shape, 3))
    out[d["row"].to_numpy(int), d["col"].to_numpy(int)] = d[["r", "g", "b"]].to_numpy(float)
    return out


@_figure("patch_pca", ("patch_pca",))
def fig_patch_pca(tables):
    """One row per (model, image): the image, then the PCA colours at each shown layer."""
    t = _table(tables, "patch_pca")
    if not len(t) or not (t["kind"] == "pca").any():
        return None
    ctx = _Ctx(tables)
    pca, pix = t[t["kind"] == "pca"], t[t["kind"] == "image"]
    images = list(dict.fromkeys(pca["image"]))
    models = ctx.order(pca["model"])
    rows = [(m, im) for m in models for im in images]
    ncols = 1 + max(pca[pca["model"] == m]["layer"].nunique() for m in models)
    fig, axes = _new(ncols, len(rows), row_h=min(1.3, 6.9 / ncols * 0.8), extra_h=0.25)
    for r, (m, im) in enumerate(rows):
        dm = pca[(pca["model"] == m) & (pca["image"] == im)]
        di = pix[pix["image"] == im]
        if len(di):
            axes[r, 0].imshow(_grid(di, (int(di["row"].max()) + 1, int(di["col"].max()) + 1)),
                              aspect="auto")  # as the model saw it: resized to its input
        axes[r, 0].set_ylabel(ctx.label(m) if len(images) == 1 or im == images[0] else "",
                              color=ctx.color(m), fontsize=6)
        for c, li in enumerate(sorted(dm["layer"].unique()), start=1):
            dl = dm[dm["layer"] == li]
            shape = (int(dl["row"].max()) + 1, int(dl["col"].max()) + 1)
            axes[r, c].imshow(_grid(dl, shape), interpolation="nearest", aspect="auto")
            axes[r, c].set_title(f"layer {layer_name(li, int(dl['n_layers'].iloc[0]))}",
                                 fontsize=6, pad=2)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if not ax.images:
                ax.set_visible(False)
    axes[0, 0].set_title("image", fontsize=6, pad=2)
    return fig
