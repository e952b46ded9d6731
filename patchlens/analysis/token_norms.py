"""High-norm ("artifact") patch tokens per model and layer, from the stored features.

Darcet et al. (ICLR 2024, "Vision Transformers Need Registers", Sec. 2) found that large ViTs
trained long enough (DINOv2, OpenCLIP, DeiT-III) repurpose a few patch tokens of low-information,
often background, regions as global scratch space: their norm is far above the others (a bimodal
norm distribution, about 2% of the tokens, from the middle of the network on), they carry global
(image-level) information and hold little local information; register tokens remove them.
Their criterion is an absolute cutoff read off the histogram (norm > 150 for DINOv2 ViT-g); an
absolute cutoff does not transfer across models and layers, so here a token is *high-norm* when
its L2 norm exceeds ``k`` times the median patch-token norm of that layer over the analysed
images, for every ``k`` in ``thresholds`` (default 5, 10, 20: this project's choice, a factor well
inside the gap of a bimodal distribution; configure ``analyses.token_norms.params.thresholds``).

Protocol (docs/protocols.md; per model, data set and layer, over the first ``max_images`` images of
``split`` (all images when null), raw tokens, no variant applied):

* ``norm_q{q}``: quantiles of the patch-token norms (``quantiles``), ``norm_median`` alike;
* per threshold ``k``: ``frac_high`` (share of tokens above k x median), ``border_high`` (share
  of the high-norm tokens on the outermost ring of the patch grid) next to ``border_all`` (share of
  all tokens there: the chance level), ``object_high`` / ``object_all`` (share on object patches:
  patches whose pixels are mostly non-background, non-void in the semantic mask; only where the
  data set has semantic masks), ``cos_cls_high`` (mean cosine similarity of a high-norm token to
  its image's class token) next to ``cos_cls_all`` (over all tokens; only for models with a class
  token). Shares and cosines of a threshold without any high-norm token are NaN.

Output: a tidy table ``layer, statistic, threshold, value, n_images, n_tokens`` (threshold NaN for
statistics that have none). Pure numpy on top of :class:`~patchlens.features.store.FeatureStore`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from patchlens.errors import ConfigError
from patchlens.params import merge_params
from patchlens.evaluation.upsample import grid_fraction

DEFAULT_PARAMS = {"max_images": 64, "thresholds": [5.0, 10.0, 20.0],
            "quantiles": [0.01, 0.25, 0.5, 0.75, 0.99, 1.0], "background": 0}
WHERE = "analyses.token_norms.params"
COLUMNS = ["layer", "statistic", "threshold", "value", "n_images", "n_tokens"]


def check_params(params: dict | None) -> dict:
    """Defaults filled; ConfigError naming the key for a bad value."""
    p = merge_params(params, DEFAULT_PARAMS, WHERE)
    th = p["thresholds"]
    if not isinstance(th, (list, tuple)) or not th or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and t > 1 for t in th):
        raise ConfigError(f"{WHERE}.thresholds = {th!r}: expected a non-empty list of numbers > 1 "
                          "(multiples of the layer's median norm)")
    q = p["quantiles"]
    if not isinstance(q, (list, tuple)) or not q or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in q):
        raise ConfigError(f"{WHERE}.quantiles = {q!r}: expected a list of numbers in 0..1")
    mi = p["max_images"]
    if mi is not None and (isinstance(mi, bool) or not isinstance(mi, int) or mi < 1):
        raise ConfigError(f"{WHERE}.max_images = {mi!r}: expected null or an integer >= 1")
    return p


def border_mask(grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the outermost ring of patches."""
    m = np.ones(grid, bool)
    m[1:-1, 1:-1] = False
    return m


def token_norm_stats(tokens: np.ndarray, cls: np.ndarray | None = None,
                     objects: np.ndarray | None = None, thresholds=DEFAULT_PARAMS["thresholds"],
                     quantiles=DEFAULT_PARAMS["quantiles"]) -> pd.DataFrame:
    """Statistics (module doc) of one layer: ``tokens`` (n, h, w, C), ``cls`` (n, C) or None,
    ``objects`` (n, h, w) bool object patches or None. Returns rows statistic, threshold, value."""
    tokens = np.asarray(tokens, np.float32)
    n, h, w, _ = tokens.shape
    norms = np.linalg.norm(tokens, axis=-1)                                 # (n, h, w)
    med = float(np.median(norms))
    rows = [("norm_median", np.nan, med)]
    rows += [(f"norm_q{q:g}", np.nan, float(v)) for q, v in
             zip(quantiles, np.quantile(norms, quantiles))]
    border = np.broadcast_to(border_mask((h, w)), norms.shape)
    cos = None
    if cls is not None:
        c = np.asarray(cls, np.float32)
        c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
        cos = np.einsum("nhwc,nc->nhw", tokens, c) / np.maximum(norms, 1e-12)
    for k in thresholds:
        high = norms > float(k) * med
        any_high = bool(high.any())

        def share(mask):
            return float(mask[high].mean()) if any_high else np.nan

        rows += [("frac_high", k, float(high.mean())), ("border_high", k, share(border)),
                 ("border_all", k, float(border.mean()))]
        if objects is not None:
            rows += [("object_high", k, share(objects)), ("object_all", k, float(objects.mean()))]
        if cos is not None:
            rows += [("cos_cls_high", k, float(cos[high].mean()) if any_high else np.nan),
                     ("cos_cls_all", k, float(cos.mean()))]
    return pd.DataFrame(rows, columns=["statistic", "threshold", "value"])


def object_patches(dataset, images: list[str], grid: tuple[int, int],
                   background: int | None) -> np.ndarray | None:
    """(n, h, w) bool: patches whose pixels are mostly labelled non-background (semantic mask,
    void ignored as non-object), or None when an image lacks a semantic mask."""
    if dataset is None or not all(dataset.manifest.loc[images, "semantic"] != ""):
        return None
    out = []
    for im in images:
        sem = dataset.load_semantic(im)
        obj = (sem != 255) & (sem != (-1 if background is None else background))
        out.append(grid_fraction(obj, grid) > 0.5)
    return np.stack(out)


def analyse(store, dataset, params: dict | None = None, images: list[str] | None = None
            ) -> pd.DataFrame:
    """Every layer of a feature store (module doc); ``images`` default: all of the store."""
    p = check_params(params)
    images = list(store.images if images is None else images)
    if p["max_images"] is not None:
        images = images[:p["max_images"]]
    objects = object_patches(dataset, images, tuple(store.grid), p["background"])
    frames = []
    for layer in store.layers:
        tok = store.tokens(layer, images)
        cls = store.cls(layer, images) if store.has_cls else None
        t = token_norm_stats(tok, cls, objects, p["thresholds"], p["quantiles"])
        frames.append(t.assign(layer=layer, n_images=len(images),
                               n_tokens=int(np.prod(tok.shape[:3]))))
    return pd.concat(frames, ignore_index=True)[COLUMNS]
