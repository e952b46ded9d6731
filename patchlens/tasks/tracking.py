"""Video object tracking by label propagation on frozen patch features (DAVIS-2017 protocol).

Protocol (Caron et al., ICCV 2021 "Emerging Properties in Self-Supervised Vision Transformers",
reference code ``eval_video_segmentation.py`` of github.com/facebookresearch/dino, itself after
Jabri et al., NeurIPS 2020 "Space-Time Correspondence as a Contrastive Random Walk" and UVC),
used per layer by Walmer et al. (CVPR 2023, "Teaching Matters") and Vanyan et al. (2024):

1. Objects are the ids 1..N, N = the largest instance id of the first frame (0 background; 255
   void is treated as background for the seed), as the official toolkit scores them
   (``davis2017/davis.py`` ``get_all_masks``: ``num_objects = max(first mask)``): an id below N
   that is absent from the first frame has an empty seed, is never predicted, and scores as the
   toolkit scores a result without it (J = F = 1 on frames where it is absent from the ground
   truth too, 0 where it is present); ids above N in later frames count as background. The
   seed label map is the first frame's instance mask resized to the patch grid by nearest
   neighbour (pixel centres), one-hot over (background, object 1..N): ``(h, w, N+1)``.
2. Frames are processed in ``frame`` order. The context of target frame t is the first frame plus
   the ``n_last_frames`` (7) preceding frames, each with its *soft* propagated label map (the
   first frame with its one-hot seed).
3. Affinities: cosine similarity between the L2-normalised patch features of the target frame and
   of every context frame, restricted to a square window of radius ``size_mask_neighborhood`` (12)
   patches around the target patch (|dy| <= r and |dx| <= r; r = 0 disables the restriction, as in
   the reference). For every target patch the ``topk`` (5) most similar source patches, over all
   context frames jointly, get weights ``exp(sim / temperature)`` normalised to sum 1
   (temperature 0.1, hard-coded in the reference), the rest weight 0; the target's soft labels
   are the weighted sum of the sources' labels.
4. The soft label map (h, w, N+1) is resized bilinearly (align_corners=False) to the frame's own
   pixels, every channel with a positive maximum is min-max normalised to [0, 1] (the reference's
   ``norm_mask``; switch with ``norm_mask``), and the argmax is the predicted instance map.
   (The reference resizes to the network input and then, by nearest neighbour, to the original
   size; here features map onto the whole frame, so the bilinear step goes to (H, W) directly.)
5. Evaluation (Pont-Tuset et al. 2017; github.com/davisvideochallenge/davis2017-evaluation): J
   (region IoU) and F (boundary F-measure, tolerance 0.008 of the diagonal) per object and frame,
   see :mod:`patchlens.evaluation.davis_metrics`; frames 1..T-2 are scored (the official
   semi-supervised evaluation drops the first and the last frame; ``skip_last_frame: false`` scores 1..T-1).
   Per object the mean over frames; per sequence the mean over its objects. The overall row
   (``sequence = "all"``) averages objects pooled over all sequences, as the official
   ``J&F-Mean`` does (``average: objects``, the default), or the per-sequence means
   (``average: sequences``); ``jf = (j + f) / 2``. Void (255) pixels are excluded from J and F
   here; the toolkit's semi-supervised path counts them as background (see
   :mod:`patchlens.evaluation.davis_metrics` and ``docs/protocols.md#tracking``).

Cost: per target frame one (P x C) by (C x n_ctx P) product, done in bands of target rows whose
sources are only the rows within the radius (never quadratic in the video length); memory is a few
frames of features plus one sequence's masks.

Output rows: metrics ``j``, ``f``, ``jf`` per layer for every sequence and for ``"all"``; column
``sequence``; ``n_eval`` = frames scored (per sequence) or sequences scored (``all``);
``n_skipped`` = sequences skipped with a warning (empty first-frame mask, too few frames).
``seed`` is 0: the protocol samples nothing.
"""
from __future__ import annotations

import logging
from itertools import chain

import numpy as np
import pandas as pd

from patchlens.data.dataset import VOID
from patchlens.device import choose_engine
from patchlens.errors import ConfigError, DataError
from patchlens.params import merge_params
from patchlens.stats.units import records
from patchlens.evaluation.davis_metrics import jf_labels
from patchlens.evaluation.propagation import (band_rows, labels_to_mask, seed_labels,
                                              track_variants)
from patchlens.evaluation.affinity import VariantAffinity, spec_groups
from patchlens.tasks.registry import TaskSpec, register_task

log = logging.getLogger("patchlens")

DEFAULT_PARAMS: dict = {
    "split": "video",               # manifest split holding the video frames
    "n_last_frames": 7,             # preceding frames in the context (plus the first frame)
    "size_mask_neighborhood": 12,   # window radius in patches; 0 = no restriction
    "topk": 5,                      # source patches kept per target patch
    "temperature": 0.1,             # softmax temperature over the top-k cosine similarities
    "norm_mask": True,              # per-channel min-max normalisation before the argmax
    "bound_th": 0.008,              # F tolerance: fraction of the diagonal (or pixels if >= 1)
    "skip_last_frame": True,        # official DAVIS evaluation scores frames 1..T-2
    "average": "objects",           # overall mean over "objects" (official) or "sequences"
}
REQUIRES: tuple[str, ...] = ("video", "instance")

# -- task entry point -----------------------------------------------------------------------------

def check_params(params: dict) -> dict:
    """``tasks.tracking.params`` with defaults filled; ConfigError naming the key otherwise."""
    p = merge_params(params, DEFAULT_PARAMS, "tasks.tracking.params")
    ints = {"n_last_frames": 0, "size_mask_neighborhood": 0, "topk": 1}
    for key, lo in ints.items():
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"tasks.tracking.params.{key}: expected an integer >= {lo}, "
                              f"got {v!r}")
    for key in ("temperature", "bound_th"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"tasks.tracking.params.{key}: expected a number > 0, got {v!r}")
    for key in ("norm_mask", "skip_last_frame"):
        if not isinstance(p[key], bool):
            raise ConfigError(f"tasks.tracking.params.{key}: expected true or false, "
                              f"got {p[key]!r}")
    if p["average"] not in ("objects", "sequences"):
        raise ConfigError(f"tasks.tracking.params.average: expected 'objects' or 'sequences', "
                          f"got {p['average']!r}")
    return p


def _sequences(dataset, split: str) -> dict[str, list[str]]:
    in_split = set(dataset.split(split))
    seqs = {s: [f for f in frames if f in in_split] for s, frames in dataset.sequences.items()}
    seqs = {s: f for s, f in seqs.items() if f}
    if not seqs:
        raise DataError(f"{dataset.root / 'manifest.csv'}: no video frames (sequence set) in "
                        f"split {split!r}; set tasks.tracking.params.split to the split holding "
                        "the videos")
    return seqs


def _score_sequence(store, variants, layers, name, frames, masks, p, grid, device=None):
    """{variant: {layer: (J (n_obj,), F (n_obj,), n_frames)}} of one sequence, or None if
    skipped."""
    first = masks[0]
    present = np.setdiff1d(np.unique(first), [0, VOID])
    if len(present) == 0:
        log.warning("tracking: sequence %r skipped: its first frame %r has no object "
                    "(empty instance mask)", name, frames[0])
        return None
    last = len(frames) - (2 if p["skip_last_frame"] else 1)
    if last < 1:
        log.warning("tracking: sequence %r skipped: %d frame(s) leave no frame to score "
                    "(the first%s is not scored)", name, len(frames),
                    " and the last" if p["skip_last_frame"] else "")
        return None
    ids = np.arange(1, int(present.max()) + 1)         # 1..max id, as the DAVIS toolkit
    absent = np.setdiff1d(ids, present)
    if len(absent):
        log.warning("tracking: sequence %r: object id(s) %s absent from the first frame are "
                    "scored as the DAVIS toolkit does (never predicted)", name, absent.tolist())
    seed = seed_labels(first, ids, grid)
    lost = np.setdiff1d(ids[seed.reshape(-1, len(ids) + 1)[:, 1:].sum(0) == 0], absent)
    if len(lost):
        log.warning("tracking: sequence %r: object(s) %s cover no patch centre of the %dx%d grid "
                    "in the first frame; they cannot be propagated and score 0",
                    name, lost.tolist(), *grid)
    lut = np.zeros(256, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    out: dict = {v: {} for v in variants}
    for layer in layers:
        for specs, t in spec_groups(variants):
            frames_it = (store.tokens(layer, [f]) for f in frames[:last + 1])
            feats = (x[0] for x in (frames_it if t is None else (t(layer, x) for x in frames_it)))
            first = next(feats)
            aff = VariantAffinity(specs, first.shape[-1], device or "cpu",
                                  torch_backend=device is not None)
            js: dict = {v: [] for v in specs}
            fs: dict = {v: [] for v in specs}
            for scores in _frame_scores(chain([first], feats), seed, masks, lut, len(ids), p,
                                        device, aff):
                for v, (j, f) in scores.items():
                    js[v].append(j)
                    fs[v].append(f)
            for v in specs:
                out[v][layer] = (np.mean(js[v], axis=0), np.mean(fs[v], axis=0), len(js[v]))
    return out


def _frame_scores(feats, seed, masks, lut, n_obj, p, device: str | None, aff):
    """{variant: (J, F) per object} of frames 1, 2, ...: numpy (``device`` None) or torch on
    ``device`` (propagation, upsampling and J/F there;
    :mod:`patchlens.evaluation.propagation_torch`); ``aff`` the frames' :class:`VariantAffinity`."""
    args = (p["n_last_frames"], p["size_mask_neighborhood"], p["topk"], p["temperature"])
    if device is None:
        for t, softs in enumerate(track_variants(feats, seed, aff, *args), start=1):
            gt, void = lut[masks[t]], masks[t] == VOID
            yield {v: jf_labels(gt, labels_to_mask(soft, masks[t].shape, p["norm_mask"]), n_obj,
                                void, p["bound_th"]) for v, soft in softs.items()}
        return
    import torch

    from patchlens.evaluation import davis_torch, propagation_torch as pt

    lut_t = torch.from_numpy(lut).to(device)
    for t, softs in enumerate(track_variants(feats, seed, aff, *args), start=1):
        gt = torch.tensor(np.asarray(masks[t]), device=device)
        gl, void = lut_t[gt.long()], gt == VOID
        yield {v: davis_torch.jf_labels(gl, pt.labels_to_mask(soft, tuple(gt.shape),
                                                              p["norm_mask"]),
                                        n_obj, void, p["bound_th"]) for v, soft in softs.items()}


def _tracking_units(layer: int, per_seq: dict, average: str) -> list:
    """Units records of one layer from {sequence: (J (n_obj,), F (n_obj,), n_frames)}."""
    out = []
    obj = {s: ([f"{s}/{i + 1}" for i in range(len(j))], j, f) for s, (j, f, _) in per_seq.items()}
    seq = (list(per_seq), [r[0].mean() for r in per_seq.values()],
           [r[1].mean() for r in per_seq.values()])
    groups = [(s, o) for s, o in obj.items()]
    groups.append(("all", seq if average == "sequences" else
                   tuple(np.concatenate(x) if i else sum(x, []) for i, x in
                         enumerate(zip(*obj.values())))))
    for name, (u, j, f) in groups:
        j, f = np.asarray(j, float), np.asarray(f, float)
        for metric, v in (("j", j), ("f", f), ("jf", (j + f) / 2)):
            out.append(records(layer, 0, metric, u, num=v, sequence=name))
    return out


def run_variants(store, dataset, variants: dict, params: dict, layers: list[int] | None = None,
                 units: dict | None = None, device: str = "cpu", engine: str | None = None
                 ) -> dict[str, pd.DataFrame]:
    """{variant: :func:`run`'s table} of every variant of ``variants`` ({name:
    :class:`VariantSpec` or ``transform(layer, x)``}; ``units``: {name: list}) at once: each
    frame's raw tokens are read once, and in every band one product serves raw and every
    drop{m} (one more for zscore; :class:`~patchlens.evaluation.affinity.VariantAffinity`);
    each variant propagates its own labels. The evaluator's ``TaskSpec.run_variants``."""
    p = check_params(params)
    engine = choose_engine(engine, device, "tracking")
    dev = device if engine == "torch" else None
    layers = list(store.layers) if layers is None else [int(x) for x in layers]
    grid = tuple(store.grid)
    seqs = _sequences(dataset, p["split"])
    per_seq: dict[str, dict] = {v: {} for v in variants}
    skipped = 0
    for name, frames in seqs.items():
        masks = [dataset.load_instance(f) for f in frames]
        res = _score_sequence(store, variants, layers, name, frames, masks, p, grid, dev)
        if res is None:
            skipped += 1
            continue
        for v in variants:
            per_seq[v][name] = res[v]
    if skipped == len(seqs):
        raise DataError(f"{dataset.root}: no video sequence of split {p['split']!r} could be "
                        f"scored ({skipped} skipped, see the warnings)")
    return {v: _table(per_seq[v], layers, skipped, p, None if units is None else units[v])
            for v in variants}


def run(store, dataset, transform, params: dict, layers: list[int] | None = None,
        units: list | None = None, device: str = "cpu", engine: str | None = None
        ) -> pd.DataFrame:
    """DAVIS label-propagation J, F and J&F per layer (see the module docstring for the protocol).
    ``units`` (a list) receives per object J, F, J&F (per-sequence rows, and the overall row under
    ``average: objects``) or per sequence (overall row, ``average: sequences``); see
    :mod:`patchlens.stats.units`.

    Loops sequences outside and layers inside, so one sequence's masks are loaded once; features
    are read one frame of one layer at a time. ``device`` (``"cpu"``, ``"cuda"``, ...): where
    the work runs; ``engine``: ``"numpy"`` (the CPU default) or ``"torch"`` (propagation, mask
    upsampling and J/F as torch on ``device``; the default off the CPU).
    """
    return run_variants(store, dataset, {"_": transform}, params, layers,
                        None if units is None else {"_": units}, device, engine)["_"]


def _table(per_seq: dict, layers: list[int], skipped: int, p: dict, units: list | None
           ) -> pd.DataFrame:
    """One variant's rows (per sequence and ``all``, per layer) and units."""
    rows = []
    for layer in layers:
        seq_j, seq_f, obj_j, obj_f = [], [], [], []
        for name, res in per_seq.items():
            j, f, n_frames = res[layer]
            seq_j.append(j.mean())
            seq_f.append(f.mean())
            obj_j.extend(j)
            obj_f.extend(f)
            for metric, v in (("j", j.mean()), ("f", f.mean()), ("jf", (j.mean() + f.mean()) / 2)):
                rows.append((layer, 0, metric, float(v), n_frames, 0, name))
        J, F = (np.mean(obj_j), np.mean(obj_f)) if p["average"] == "objects" else \
            (np.mean(seq_j), np.mean(seq_f))
        for metric, v in (("j", J), ("f", F), ("jf", (J + F) / 2)):
            rows.append((layer, 0, metric, float(v), len(per_seq), skipped, "all"))
        if units is not None:
            units.extend(_tracking_units(layer, {s: r[layer] for s, r in per_seq.items()},
                                         p["average"]))
    return pd.DataFrame(rows, columns=["layer", "seed", "metric", "value", "n_eval", "n_skipped",
                                       "sequence"])


def flop(p: dict, counts: dict, entry: dict, grid, C: int, variants=("raw",),
         shared_product: bool = True, tensor_cores: bool = True, on_device: bool = True,
         kernels_per_band: int = 12) -> dict:
    """The plan's cost of one layer, every variant: in every scored frame each band of target
    rows against the context frames' rows within the radius
    (:func:`patchlens.evaluation.propagation.propagate_variants`), the products shared by the
    variants and float16 on a GPU's tensor cores, as :func:`run_variants` computes them
    (``similarity_cost``; ``shared_product=False``: one product per variant); every
    frame's mask pixels x (objects + 1) per variant
    upsampled and scored (J&F), in torch on the GPU (``on_device``: ``device_mask_pixels``,
    ``kernels_per_band`` launches per band, variant and frame) or in numpy (``mask_pixels``)."""
    from patchlens.data.sizes import mask_size, n_videos, video_objects
    from patchlens.evaluation.similarity_cost import similarity_cost

    frames, (h, w), radius = counts.get(p["split"], 0), grid, p["size_mask_neighborhood"]
    videos = max(1, min(n_videos(entry), frames))
    scored = max(0, int(frames / videos) - (2 if p["skip_last_frame"] else 1))
    V, (H, W), pairs = len(variants), mask_size(entry), 0.0
    for t in range(1, scored + 1):
        n_ctx = 1 + min(t - 1, p["n_last_frames"])
        rows = band_rows(h, w, n_ctx, radius)
        pairs += videos * sum((min(h, a + rows) - a) * w * n_ctx * w * (
            (min(h, a + rows + radius) - max(0, a - radius)) if radius > 0 else h)
            for a in range(0, h, rows))
    out = similarity_cost(pairs, 1, C, variants, shared_product, tensor_cores)
    bands = -(-h // band_rows(h, w, 1 + p["n_last_frames"], radius))
    out["device_mask_pixels" if on_device else "mask_pixels"] = (
        V * frames * H * W * (video_objects(entry) + 1))
    out["launches"] = on_device * V * videos * scored * (bands + 1) * kernels_per_band
    return out


SPEC = register_task(TaskSpec(
    name="tracking", title="Tracking", color="#cc79a7", headline="jf",
    defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
    order=40, figures=("tracking",), flop=flop, run_variants=run_variants))
