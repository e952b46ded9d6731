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
   ``trg_x1 - trg_x0`` and ``trg_y1 - trg_y0``).
5. Averaging (the SPair convention, as ``run_kp_analysis.py`` computes it): within a category
   PCK@alpha = correct / evaluated over all keypoints of all its pairs (per-keypoint average);
   the overall row (``category = "all"``) is the unweighted mean of the category PCKs. A pair's
   category is the class (``classes.csv`` name) of the first label of its source image in the
   manifest (SPair: the pair's category; ``scenes``: the pair's object class); pairs whose source
   image has no label form the category ``"none"``.
6. Pair sampling (``sampling``): ``all`` (default) scores every pair of the split;
   ``teaching_matters`` scores ``pairs_per_category`` (20) pairs per category drawn at random
   with ``seed`` (Walmer et al.'s ``--pairs_per_category 20``; drawn without replacement here,
   the reference draws with replacement), categories in sorted order from one seeded generator.

Defaults: alphas {0.01, 0.05, 0.1} as in Teaching Matters (``run_kp_analysis.py``); other
thresholds (e.g. 0.15) may be added. The reference counts ``err < threshold`` (strict); here
``<=`` as in SPair's own evaluation; the two differ only on exact ties. Every known difference
from the papers: ``docs/protocols.md#keypoints``.

Keypoints with a non-finite coordinate or outside either image ([0, W-1] x [0, H-1]) and pairs
whose trg box is empty are skipped with a warning naming the pair, and counted in ``n_skipped``
(of their category; the ``all`` row counts every skipped keypoint).
Output rows per layer, category and alpha: metric ``pck@{alpha:g}``, column ``category``,
``n_eval`` = keypoints scored (``all``: over every category), ``n_skipped`` = keypoints skipped;
``seed`` is the sampling seed (0 for ``sampling: all``, where nothing is sampled).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from patchlens.device import matmul
from patchlens.errors import ConfigError, DataError
from patchlens.params import merge_params
from patchlens.stats.units import records
from patchlens.evaluation.knn import l2_normalize
from patchlens.evaluation.upsample import resize_bilinear
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

DEFAULT_PARAMS: dict = {
    "split": "pair",                  # manifest split of the keypoint pair images
    "alphas": [0.01, 0.05, 0.1],      # PCK thresholds as fractions of the trg box's longer side
    "max_side": None,                 # cap on the trg score map's longer side (None: full size)
    "sampling": "all",                # "all" pairs, or "teaching_matters": k random per category
    "pairs_per_category": 20,         # k of sampling: teaching_matters
    "seed": 0,                        # seed of sampling: teaching_matters
}
SAMPLINGS = ("all", "teaching_matters")
REQUIRES: tuple[str, ...] = ("keypoints",)

_CHUNK_BYTES = 256 << 20  # feature bytes read at once (images of a group of pairs)


# -- protocol pieces (pure numpy) ---------------------------------------------------------------

def sample_bilinear(fmap: np.ndarray, xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Values (K, C) of the map (h, w, C), resized bilinearly to ``size`` = (H, W) pixels
    (align_corners=False, as :func:`~patchlens.evaluation.upsample.resize_bilinear`), at pixel
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
    scores = matmul(trg_n.reshape(-1, q.shape[1]), q.T).reshape(*trg_n.shape[:2], len(q))  # (h, w, K)
    Hs, Ws = capped_size(trg_size, max_side)
    up = resize_bilinear(scores, (Hs, Ws)).reshape(Hs * Ws, len(q))
    ys, xs = np.divmod(np.argmax(up, axis=0), Ws)
    H, W = trg_size
    return np.stack([(xs + 0.5) * W / Ws - 0.5, (ys + 0.5) * H / Hs - 0.5], axis=1)


def pck(pred: np.ndarray, true: np.ndarray, box_side: np.ndarray, alpha: float) -> np.ndarray:
    """Per keypoint: correct (bool) when ||pred - true|| <= alpha * box_side (step 4)."""
    return np.linalg.norm(np.asarray(pred) - np.asarray(true), axis=-1) <= alpha * box_side


# -- task entry point -----------------------------------------------------------------------------

def check_params(params: dict) -> dict:
    """``tasks.keypoints.params`` with defaults filled; ConfigError naming the key otherwise."""
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
    if p["sampling"] not in SAMPLINGS:
        raise ConfigError(f"tasks.keypoints.params.sampling: expected one of {list(SAMPLINGS)}, "
                          f"got {p['sampling']!r}")
    for key, lo in (("pairs_per_category", 1), ("seed", 0)):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"tasks.keypoints.params.{key}: expected an integer >= {lo}, "
                              f"got {v!r}")
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


def pair_categories(dataset, kp: pd.DataFrame) -> pd.Series:
    """Category name per keypoint row: the class name of the source image's first label
    (``"none"`` when it has no label; the class id itself when classes.csv lacks it)."""
    names = dict(zip(dataset.classes["class"].astype(int), dataset.classes["name"].astype(str)))
    first = {}
    for im in kp.src_image.unique():
        lab = dataset.labels(im)
        first[im] = names.get(lab[0], str(lab[0])) if lab else "none"
    return kp.src_image.map(first).astype(str)


def sample_pairs(kp: pd.DataFrame, per_category: int, seed: int) -> pd.DataFrame:
    """Teaching Matters' sampling: ``per_category`` pairs of every category (all when fewer),
    drawn without replacement by one generator seeded with ``seed``, categories in sorted order."""
    rng = np.random.default_rng(seed)
    keep = []
    for cat in sorted(kp.category.unique()):
        pairs = np.array(sorted(kp.loc[kp.category == cat, "pair"].unique()))
        keep += list(rng.choice(pairs, min(per_category, len(pairs)), replace=False))
    return kp[kp.pair.isin(set(keep))]


def category_means(per_category: pd.DataFrame) -> pd.DataFrame:
    """The overall rows (``category = "all"``) from per-category rows: per (layer, metric) the
    unweighted mean of the category PCKs, keypoints and skips summed (step 5)."""
    g = per_category.groupby(["layer", "seed", "metric"], sort=False)
    out = g.agg(value=("value", "mean"), n_eval=("n_eval", "sum"),
                n_skipped=("n_skipped", "sum")).reset_index()
    return out.assign(category="all")


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
    """PCK@alpha per layer and category of nearest-neighbour keypoint transfer, plus the mean
    over categories (``category = "all"``; see the module docstring). ``units`` (a list)
    receives per keypoint pair the correct and scored keypoints (:mod:`patchlens.stats.units`):
    a pooled ratio per category row, and the mean of the category ratios (resampled within
    categories) for the ``all`` row."""
    p = check_params(params)
    layers = list(store.layers) if layers is None else [int(x) for x in layers]
    kp, _ = _pairs(dataset, p["split"])
    kp["category"] = pair_categories(dataset, kp)
    seed = 0
    if p["sampling"] == "teaching_matters":
        kp, seed = sample_pairs(kp, p["pairs_per_category"], p["seed"]), p["seed"]
    skipped = (~kp.valid).groupby(kp.category).sum()
    kp = kp[kp.valid]
    if kp.empty:
        raise DataError(f"{dataset.root / 'keypoints.csv'}: no valid keypoint left in split "
                        f"{p['split']!r} ({int(skipped.sum())} skipped, see the warnings)")
    cats = sorted(kp.category.unique())
    counts = kp.groupby("category").size()
    h, w = store.grid
    per_chunk = max(2, _CHUNK_BYTES // max(1, h * w * store.channels * 4))
    rows = []
    for layer in layers:
        correct = {(c, a): 0 for c in cats for a in p["alphas"]}
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
                    correct[r.category, a] += ok
                    per_pair[a].append((r.pair, r.category, ok, len(g)))
        for c in cats:
            for a in p["alphas"]:
                rows.append((layer, seed, f"pck@{a:g}", correct[c, a] / counts[c], int(counts[c]),
                             int(skipped.get(c, 0)), c))
        if units is not None:
            for a in p["alphas"]:
                u, cat, ok, n = (np.asarray(x) for x in zip(*per_pair[a]))
                for c in cats:
                    m = cat == c
                    units.append(records(layer, seed, f"pck@{a:g}", u[m], num=ok[m], den=n[m],
                                         category=c))
                units.append(records(layer, seed, f"pck@{a:g}", u, agg="category_ratio",
                                     strata=cat, num=ok, den=n, category="all"))
    cols = ["layer", "seed", "metric", "value", "n_eval", "n_skipped", "category"]
    per_cat = pd.DataFrame(rows, columns=cols)
    overall = category_means(per_cat)
    overall["n_skipped"] = int(skipped.sum())     # also categories with no valid keypoint left
    return pd.concat([per_cat, overall[cols]], ignore_index=True)


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",)) -> dict:
    """The resource plan's cost of one layer (every variant): per pair, each source keypoint
    against every target patch plus the upsampled score map."""
    from patchlens.data.sizes import SPAIR_KEYPOINTS_PER_PAIR, image_size, n_pairs

    h, w = image_size(entry)
    per_pair = SPAIR_KEYPOINTS_PER_PAIR * (2.0 * grid[0] * grid[1] * C + 8.0 * h * w)
    return {"flop": len(variants) * n_pairs(entry, counts) * per_pair}


SPEC = register_task(TaskSpec(
    name="keypoints", title="Keypoint correspondence", color="#e69f00", headline="pck@0.1",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    order=50, figures=("keypoints",), flop=flop))
