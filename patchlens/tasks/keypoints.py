"""Keypoint correspondence by nearest neighbours of frozen patch features (PCK@alpha).

Protocol (SPair-71k, Min et al. 2019, arXiv 1908.10543; per-layer use in Walmer et al., CVPR 2023
"Teaching Matters", reference code ``run_kp_analysis.py`` of github.com/mwalmer-umd/vit_analysis):

1. For a pair (src, trg) the patch features of one layer are L2-normalised per patch (the
   reference normalises before upsampling) and read as maps on each image's own pixels by
   bilinear interpolation (align_corners=False; the patch grid covers the whole image).
2. The src descriptor of a keypoint is the src map at the keypoint (pixel-index coordinates,
   pixel centres at integers, as in SPair annotations), i.e. bilinear sampling of the grid.
3. The prediction is the trg pixel whose interpolated feature has the largest dot product with the
   descriptor (cosine of the per-patch normalised features, interpolated as in the reference;
   ties -> first pixel in row-major order). Because interpolation is linear, that score map is
   exactly the bilinear upsampling of the patch-level scores (h, w, K), so the search over all
   trg pixels costs O(H W K), not O(H W C), and needs no k-NN index.
   ``max_side`` (default None = original resolution) caps the longer side of the trg score map;
   predictions are mapped back to original pixel coordinates (pixel centres), so a cap only
   quantises predictions to about max(H, W) / max_side pixels.
4. A keypoint is correct when the Euclidean distance between prediction and true trg point is
   <= alpha * max(height, width) of the trg bounding box (SPair's PCK@alpha_bbox;
   ``trg_x1 - trg_x0`` and ``trg_y1 - trg_y0``). PCK@alpha = correct / evaluated, pooled over
   all keypoints of all pairs (per-keypoint average, as the reference computes it within a
   category; the layout has no categories, so there is no per-category mean).

Keypoints with a non-finite coordinate or outside either image ([0, W-1] x [0, H-1]) and pairs
whose trg box is empty are skipped with a warning naming the pair, and counted in ``n_skipped``.
Output rows per layer and alpha: metric ``pck@{alpha:g}``, ``n_eval`` = keypoints scored,
``n_skipped`` = keypoints skipped; ``seed`` is 0 (nothing is sampled).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from patchlens.errors import ConfigError, DataError
from patchlens.params import merge_params
from patchlens.stats.units import records
from patchlens.tasks.knn import l2_normalize
from patchlens.tasks.upsample import resize_bilinear

log = logging.getLogger("patchlens")

DEFAULT_PARAMS: dict = {
    "split": "pair",                  # manifest split of the keypoint pair images
    "alphas": [0.05, 0.1, 0.15],      # PCK thresholds as fractions of the trg box's longer side
    "max_side": None,                 # cap on the trg score map's longer side (None: full size)
}
REQUIRES: tuple[str, ...] = ("keypoints",)

_CHUNK_BYTES = 256 << 20  # feature bytes read at once (images of a group of pairs)


# -- protocol pieces (pure numpy) ---------------------------------------------------------------

def sample_bilinear(fmap: np.ndarray, xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Values (K, C) of the map (h, w, C), resized bilinearly to ``size`` = (H, W) pixels
    (align_corners=False, as :func:`~patchlens.tasks.upsample.resize_bilinear`), at pixel
    coordinates ``xy`` (K, 2) = (x, y); exact at integer pixels, continuous in between."""
    (h, w), (H, W) = fmap.shape[:2], size
    gx = np.clip((xy[:, 0] + 0.5) * w / W - 0.5, 0, w - 1)
    gy = np.clip((xy[:, 1] + 0.5) * h / H - 0.5, 0, h - 1)
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (gx - x0)[:, None], (gy - y0)[:, None]
    return ((1 - ay) * ((1 - ax) * fmap[y0, x0] + ax * fmap[y0, x1])
            + ay * ((1 - ax) * fmap[y1, x0] + ax * fmap[y1, x1])).astype(np.float32)


def capped_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(H, W) scaled so that the longer side is at most ``max_side`` (None: unchanged)."""
    H, W = size
    if max_side is None or max(H, W) <= max_side:
        return H, W
    s = max_side / max(H, W)
    return max(1, round(H * s)), max(1, round(W * s))


def predict(src: np.ndarray, src_size: tuple[int, int], src_xy: np.ndarray, trg: np.ndarray,
            trg_size: tuple[int, int], max_side: int | None = None) -> np.ndarray:
    """Predicted trg pixel coordinates (K, 2) = (x, y) of src keypoints ``src_xy`` (K, 2).

    ``src``/``trg`` are patch features (h, w, C) of the two images; steps 1-3 of the protocol.
    """
    src_n, trg_n = l2_normalize(src), l2_normalize(trg)
    q = sample_bilinear(src_n, np.asarray(src_xy, np.float64), src_size)   # (K, C)
    scores = trg_n @ q.T                                                    # (h, w, K)
    Hs, Ws = capped_size(trg_size, max_side)
    up = resize_bilinear(scores, (Hs, Ws)).reshape(Hs * Ws, len(q))
    ys, xs = np.divmod(np.argmax(up, axis=0), Ws)
    H, W = trg_size
    return np.stack([(xs + 0.5) * W / Ws - 0.5, (ys + 0.5) * H / Hs - 0.5], axis=1)


def pck(pred: np.ndarray, true: np.ndarray, box_side: np.ndarray, alpha: float) -> np.ndarray:
    """Per keypoint: correct (bool) when ||pred - true|| <= alpha * box_side (step 4)."""
    return np.linalg.norm(np.asarray(pred) - np.asarray(true), axis=-1) <= alpha * box_side


# -- task entry point -----------------------------------------------------------------------------

def _check_params(params: dict) -> dict:
    p = merge_params(params, DEFAULT_PARAMS, "tasks.keypoints.params")
    al = p["alphas"]
    if isinstance(al, (int, float)) and not isinstance(al, bool):
        al = [al]
    if not isinstance(al, (list, tuple)) or not al or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in al):
        raise ConfigError("tasks.keypoints.params.alphas: expected a non-empty list of numbers "
                          f"> 0, got {p['alphas']!r}")
    p["alphas"] = [float(a) for a in al]
    ms = p["max_side"]
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, np.integer)) or ms < 1):
        raise ConfigError("tasks.keypoints.params.max_side: expected null or an integer >= 1, "
                          f"got {ms!r}")
    if not isinstance(p["split"], str):
        raise ConfigError("tasks.keypoints.params.split: expected a split name, "
                          f"got {p['split']!r}")
    return p


def _pairs(dataset, split: str) -> tuple[pd.DataFrame, int]:
    """Keypoint rows of the pairs whose two images are in ``split``, with image sizes and a
    ``valid`` flag; invalid keypoints are warned about per pair. Returns (rows, n_invalid)."""
    kp = dataset.keypoints
    where = dataset.root / "keypoints.csv"
    if kp is None or len(kp) == 0:
        raise DataError(f"{where}: missing or empty; this data set has no keypoint pairs")
    man = dataset.manifest
    for col in ("src_image", "trg_image"):
        unknown = ~kp[col].isin(man.index)
        if unknown.any():
            r = kp[unknown].iloc[0]
            raise DataError(f"{where}: pair {r['pair']!r} names {col} {r[col]!r}, which is not "
                            f"in manifest.csv; regenerate the keypoint table")
    n_img = kp.groupby("pair", sort=False)[["src_image", "trg_image"]].nunique().max(axis=1)
    if (n_img > 1).any():
        raise DataError(f"{where}: pair {n_img.index[n_img > 1][0]!r} names more than one source "
                        "or target image; give every image pair its own pair id")
    in_split = set(dataset.split(split))
    kp = kp[kp.src_image.isin(in_split) & kp.trg_image.isin(in_split)].copy()
    if kp.empty:
        raise DataError(f"{where}: no pair has both images in split {split!r}; set "
                        "tasks.keypoints.params.split to the split of the pair images")
    num = ["src_x", "src_y", "trg_x", "trg_y", "trg_x0", "trg_y0", "trg_x1", "trg_y1"]
    try:
        kp[num] = kp[num].apply(pd.to_numeric, errors="coerce").astype(float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: non-numeric coordinates ({exc}); regenerate it") from None
    for side in ("src", "trg"):
        for dim, col in (("h", "height"), ("w", "width")):
            v = pd.to_numeric(man.loc[kp[f"{side}_image"], col], errors="coerce").to_numpy(float)
            bad = ~(v > 0)
            if bad.any():
                im = kp[f"{side}_image"].iloc[int(np.argmax(bad))]
                raise DataError(f"{dataset.root / 'manifest.csv'}: image {im!r} has no valid "
                                f"{col}; regenerate the manifest")
            kp[f"{side}_{dim}"] = v
    kp["box"] = np.maximum(kp.trg_x1 - kp.trg_x0, kp.trg_y1 - kp.trg_y0)

    def inside(side):
        x, y = kp[f"{side}_x"], kp[f"{side}_y"]
        return (x >= 0) & (y >= 0) & (x <= kp[f"{side}_w"] - 1) & (y <= kp[f"{side}_h"] - 1)

    box_ok = np.isfinite(kp.box) & (kp.box > 0)
    kp["valid"] = inside("src") & inside("trg") & box_ok      # NaN compares False
    for pair, g in kp[~kp.valid].groupby("pair", sort=False):
        if not box_ok[g.index].any():
            log.warning("keypoints: pair %r skipped: its target box (trg_x0..trg_y1) is empty or "
                        "missing (%d keypoint(s))", pair, len(g))
        else:
            log.warning("keypoints: pair %r: keypoint(s) %s outside the source or target image "
                        "(or missing) skipped", pair, g["kp"].tolist())
    return kp, int((~kp.valid).sum())


def _chunks(kp: pd.DataFrame, per_chunk: int):
    """Groups of pairs whose images number at most ``per_chunk`` (at least one pair each)."""
    chunk, images = [], set()
    for pair, g in kp.groupby("pair", sort=False):
        new = {g.src_image.iloc[0], g.trg_image.iloc[0]}
        if chunk and len(images | new) > per_chunk:
            yield chunk, sorted(images)
            chunk, images = [], set()
        chunk.append(g)
        images |= new
    if chunk:
        yield chunk, sorted(images)


def run(store, dataset, transform, params: dict, layers: list[int] | None = None,
        units: list | None = None) -> pd.DataFrame:
    """PCK@alpha per layer of nearest-neighbour keypoint transfer (see the module docstring).
    ``units`` (a list) receives per pair the correct and scored keypoints, stratified by the
    pair's ``category`` where keypoints.csv has one (:mod:`patchlens.stats.units`)."""
    p = _check_params(params)
    layers = list(store.layers) if layers is None else [int(x) for x in layers]
    kp, n_skipped = _pairs(dataset, p["split"])
    kp = kp[kp.valid]
    if kp.empty:
        raise DataError(f"{dataset.root / 'keypoints.csv'}: no valid keypoint left in split "
                        f"{p['split']!r} ({n_skipped} skipped, see the warnings)")
    h, w = store.grid
    per_chunk = max(2, _CHUNK_BYTES // max(1, h * w * store.channels * 4))
    rows = []
    for layer in layers:
        correct = {a: 0 for a in p["alphas"]}
        per_pair = {a: [] for a in p["alphas"]}
        for groups, images in _chunks(kp, per_chunk):
            feats = transform(layer, store.tokens(layer, images))
            pos = {im: i for i, im in enumerate(images)}
            for g in groups:
                r = g.iloc[0]
                pred = predict(feats[pos[r.src_image]], (int(r.src_h), int(r.src_w)),
                               g[["src_x", "src_y"]].to_numpy(),
                               feats[pos[r.trg_image]], (int(r.trg_h), int(r.trg_w)),
                               p["max_side"])
                true = g[["trg_x", "trg_y"]].to_numpy()
                for a in p["alphas"]:
                    ok = int(pck(pred, true, g.box.to_numpy(), a).sum())
                    correct[a] += ok
                    per_pair[a].append((r.pair, r.get("category", ""), ok, len(g)))
        for a in p["alphas"]:
            rows.append((layer, 0, f"pck@{a:g}", correct[a] / len(kp), len(kp), n_skipped))
            if units is not None:
                u, cat, ok, n = zip(*per_pair[a])
                units.append(records(layer, 0, f"pck@{a:g}", u, strata=cat, num=ok, den=n))
    return pd.DataFrame(rows, columns=["layer", "seed", "metric", "value", "n_eval", "n_skipped"])
