"""What a study costs before it runs: jobs, FLOPs, bytes and hours of every stage (rule).

The one home of the cost model (``patchlens plan CONFIG``; the rule resources of
``rules/common.smk`` and the disk check before extraction use it too). Nothing here imports
torch except :func:`model_facts`, which builds each timm architecture once on the ``meta``
device (no memory, no weights) for its width, depth and token count.

Counting (multiply-adds count as 2 FLOPs; float16 tokens as 2 bytes):

* images per split: a prepared ``manifest.csv`` under ``results/data/<dataset>/`` when present,
  else the recipes' official split sizes (:data:`OFFICIAL_SPLITS`) cut by the data set's
  ``max_images`` / ``max_per_class`` / ``max_sequences`` / ``max_frames`` / ``max_pairs``;
* a feature file = images x layers x patches x channels x 2 bytes (+ class tokens); layers =
  the blocks (``layers: all``; one more, the output after the final norm, when the model has
  one) or the model's ``layers:`` list;
* extraction = images x the ViT's forward FLOPs (patch embedding; per block qkv, projection,
  MLP and the two attention products);
* an evaluator job (one per task, model and data set; every variant from one read of each
  layer) reads the whole feature file once, and computes per layer and
  variant the matmuls of its protocol (docs/protocols.md): few-shot segmentation a cosine k-NN
  of every query patch against the support patches plus the L-BFGS linear probe; low-shot
  classification a k-NN of the query images; instance identification all object pairs;
  retrieval every query object against every gallery patch; tracking each frame's patches
  against the context frames' local windows (DINO's label propagation); keypoints each source
  keypoint against every target patch plus the upsampled score map.

A job's seconds = process start-up (the interpreter and the imports of its script, with torch and
timm for the rules that build a model) + generating the data (``scenes`` only; a download's time
depends on the network and is not counted) + FLOPs / the rate of the threads it declares (numpy's
fp32 matmul for the evaluators; a real ViT forward pass for the rules that run a model) +
bytes / disk rate: on this machine from a probe of a few seconds (:func:`probe`), on a GPU from
``gpu_tflops`` / ``disk_gbps``. A stage's hours on this machine are its jobs' core-seconds over
the cores (the scheduler keeps every core busy); on a GPU, its jobs' seconds one after another.
The FLOP counts are the dominant matmuls only; ``benchmarks/rehearsal.py`` measures how far the
real jobs are from them.
"""
from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from pathlib import Path

from patchlens.errors import ConfigError
from patchlens.config import (analysis_models, analysis_params, model_datasets, task_params,
                              task_variants)
from patchlens.features.variants import needs_stats

# Official split sizes (images) of the recipes (patchlens.data.recipes); per split name as the
# converters write it to the manifest.
OFFICIAL_SPLITS = {
    "voc2012": {"train": 1464, "val": 1449},          # VOC 2012 segmentation lists
    "davis2017": {"video": 1999},                       # DAVIS-2017 val 480p, 30 sequences
    "spair71k": {"pair": 1800},                         # SPair-71k images (shared by the pairs)
    "imagenette": {"train": 9469, "val": 3925},         # Imagenette v2 (320 px), 10 classes
    "nyu_depth_v2": {"train": 795, "test": 654},        # NYU Depth v2 labelled, official split
}
DAVIS_SEQUENCES = 30
DAVIS_OBJECTS = 61 / 30            # DAVIS-2017 val: 61 objects in 30 sequences
MASK_SIZE = {"davis2017": (480, 854), "voc2012": (375, 500),  # typical ground-truth mask (H, W)
             "nyu_depth_v2": (480, 640)}
SPAIR_PAIRS = {"test": 12234, "val": 5384, "trn": 53340, "train": 53340}
SPAIR_KEYPOINTS_PER_PAIR = 10      # SPair-71k test: about 10 annotated keypoint pairs per pair
CLASSES = {"voc2012": 20, "imagenette": 10}        # foreground classes drawn for support
OBJECTS_PER_IMAGE = 2              # scenes: objects per still image (about; generator default)
IMAGE_BYTES_PER_PIXEL = 0.3        # decoded-image read cost of a JPEG/PNG on disk, per pixel

# Rules with a fixed thread count (the others: ``extraction.threads`` for the rules that run a
# model, ``evaluation.threads`` for the task evaluators); the rules read their ``threads:`` here.
FIXED_THREADS = {"prepare_dataset": 1, "channel_variance": 1, "cka": 2}
MODEL_RULES = ("extract_features", "attention_stats")  # their scripts import torch and timm
# Start-up of a job's process when not probed (:func:`probe`): seconds for the interpreter,
# numpy/pandas/h5py and Snakemake's script preamble ("python"), and with torch + timm ("torch"),
# plus generating ``scenes`` images (s per megapixel). Measured on the development machine, quiet
# (python -c "from patchlens.plan import probe; print(probe())"); the probe replaces them.
STARTUP_S = {"python": 1.0, "torch": 5.3}
RENDER_S_PER_MPIX = 0.5
# ... and the few-shot linear probe's rate (its skinny matmuls and L-BFGS steps, GFLOP/s of all
# cores) and the ns per pixel x class of upsampling and arg-maxing a score map
LBFGS_GFLOPS = 26.0
BUILD_S_PER_MPARAM = 0.02  # building a timm model (random init; then weights are loaded)
UPSAMPLE_NS = 5.7
TRACK_NS = 28.0  # tracking: ns per mask pixel x channel to upsample, arg-max and score (J&F)
REDUCE_NS = 6.0  # channel statistics: ns per float16 token value read and reduced
PROPAGATE_GFLOPS = 90.0  # tracking's banded similarity + top-k (all cores)

# what :func:`probe` measures beyond the matmul and read rates (keywords of add_hours), and the
# value each takes when not probed; forward_gflops None: extraction at the matmul rate
DEFAULT_RATES = {"forward_gflops": None, "build_s_per_mparam": BUILD_S_PER_MPARAM,
                 "lbfgs_gflops": LBFGS_GFLOPS, "upsample_ns": UPSAMPLE_NS, "track_ns": TRACK_NS,
                 "propagate_gflops": PROPAGATE_GFLOPS, "reduce_ns": REDUCE_NS,
                 "startup_s": STARTUP_S, "render_s_per_mpix": RENDER_S_PER_MPIX}
PROBED = tuple(DEFAULT_RATES)
# the rate of a rule's main FLOPs (the others: numpy's matmul, cpu_gflops)
RULE_RATE = {"extract_features": "forward_gflops", "attention_stats": "forward_gflops",
             "tracking": "propagate_gflops"}

# the probed rates that grow with the cores (a job's share is its threads over the cores)
CORE_RATES = ("cpu_gflops", "forward_gflops", "lbfgs_gflops", "propagate_gflops")

GPU_TFLOPS = 50.0   # default: sustained fp32 matmul of a current data-centre GPU (H100 SXM: 67 peak)
DISK_GBPS = 2.0     # default: NVMe read/write of a GPU node, GB/s


# ----------------------------------------------------------------------------- data sets

def scenes_params(entry: dict) -> dict:
    """The generator parameters of a ``scenes`` data set entry, defaults filled."""
    from patchlens.data.scenes import resolve_params

    return resolve_params(entry.get("params") or {})


def split_counts(entry: dict, manifest: Path | None = None) -> dict[str, int]:
    """Images per manifest split of one ``datasets.<name>`` entry."""
    if manifest is not None and Path(manifest).exists():
        import pandas as pd

        return {str(k): int(v) for k, v in
                pd.read_csv(manifest, usecols=["split"])["split"].value_counts().items()}
    src, p = entry["source"], entry.get("params") or {}
    if src == "scenes":
        r = scenes_params(entry)
        return {"train": r["n_train"], "val": r["n_val"], "crop": r["n_identities"],
                "gallery": r["n_gallery"], "video": r["n_videos"] * r["n_frames"],
                "pair": 2 * r["n_pairs"]}
    if src not in OFFICIAL_SPLITS:  # imagefolder: only a prepared manifest knows
        return {s: int(p.get("max_images") or 1000) for s in p.get("splits", ["train", "val"])}
    counts = dict(OFFICIAL_SPLITS[src])
    if src == "davis2017":
        seqs = min(DAVIS_SEQUENCES, p.get("max_sequences") or DAVIS_SEQUENCES)
        per_seq = counts["video"] / DAVIS_SEQUENCES
        if p.get("max_frames"):
            per_seq = min(per_seq, p["max_frames"])
        return {"video": int(round(seqs * per_seq))}
    if src == "spair71k":
        pairs = SPAIR_PAIRS.get(p.get("split", "test"), SPAIR_PAIRS["test"])
        if p.get("max_pairs"):
            pairs = min(pairs, p["max_pairs"])
        return {"pair": min(counts["pair"], 2 * pairs)}
    splits = p.get("splits", list(counts))
    splits = [splits] if isinstance(splits, str) else splits
    out = {}
    for s in splits:
        n = counts.get(s, 0)
        if p.get("max_per_class"):
            n = min(n, p["max_per_class"] * CLASSES.get(src, 10))
        if p.get("max_images"):
            n = min(n, p["max_images"])
        out[s] = n
    return out


def n_pairs(entry: dict, counts: dict) -> int:
    """Keypoint pairs of a data set."""
    if entry["source"] == "spair71k":
        p = entry.get("params") or {}
        pairs = SPAIR_PAIRS.get(p.get("split", "test"), SPAIR_PAIRS["test"])
        return min(pairs, p["max_pairs"]) if p.get("max_pairs") else pairs
    return counts.get("pair", 0) // 2


def propagate_flop(grid, n_ctx: int, radius: int, C: int) -> float:
    """FLOPs of one target frame of DINO's label propagation as patchlens.tasks.tracking computes
    it: per band of target rows, their similarities to the context frames' rows within the
    radius (the window is a mask on that band)."""
    from patchlens.tasks.tracking import _band_rows

    h, w = grid
    rows = _band_rows(h, w, n_ctx, radius)
    total = 0.0
    for a in range(0, h, rows):
        b = min(h, a + rows)
        sa, sb = (max(0, a - radius), min(h, b + radius)) if radius > 0 else (0, h)
        total += 2.0 * (b - a) * w * n_ctx * (sb - sa) * w * C
    return total


def n_videos(entry: dict) -> int:
    """Video sequences of a data set."""
    p = entry.get("params") or {}
    if entry["source"] == "scenes":
        return scenes_params(entry)["n_videos"]
    return min(DAVIS_SEQUENCES, p.get("max_sequences") or DAVIS_SEQUENCES)


def mask_size(entry: dict) -> tuple[int, int]:
    """(H, W) of a data set's ground-truth masks (the evaluators score at the image's own size):
    ``scenes`` its generator's image size, the recipes their typical size, else the input."""
    if entry["source"] == "scenes":
        side = scenes_params(entry)["image_size"]
        return side, side
    if entry["source"] in MASK_SIZE:
        return MASK_SIZE[entry["source"]]
    from patchlens.models.resolve import input_size

    return tuple(input_size(entry.get("img_size", 224), 1))


def video_objects(entry: dict) -> float:
    """Objects per video sequence (tracked and scored one by one)."""
    if entry["source"] == "scenes":
        lo, hi = scenes_params(entry)["video_objects"]
        return (lo + hi) / 2
    return DAVIS_OBJECTS


def n_classes(entry: dict) -> int:
    if entry["source"] == "scenes":
        r = scenes_params(entry)
        return r["n_shapes"] * r["n_textures"]
    return CLASSES.get(entry["source"], 10)


# ----------------------------------------------------------------------------- models

@functools.lru_cache(maxsize=None)
def _timm_arch(name: str, kwargs_items: tuple) -> dict:
    import timm
    import torch

    kwargs = dict(kwargs_items)
    with torch.device("meta"):
        try:
            m = timm.create_model(name, pretrained=False, dynamic_img_size=True, **kwargs)
        except TypeError:
            m = timm.create_model(name, pretrained=False, **kwargs)
    mlp = m.blocks[0].mlp
    hidden = getattr(getattr(mlp, "fc1", None), "out_features", 4 * m.embed_dim)
    if getattr(mlp, "fc1_g", None) is not None:  # SwiGLU: two input projections
        hidden = 2 * mlp.fc1_g.out_features
    norm = getattr(m, "norm", None)
    return {"patch_size": int(m.patch_embed.patch_size[0]), "dim": int(m.embed_dim),
            "depth": len(m.blocks), "mlp_hidden": int(hidden),
            "prefix": int(getattr(m, "num_prefix_tokens", 1)),
            "has_cls": getattr(m, "cls_token", None) is not None,
            "final_norm": norm is not None and not isinstance(norm, torch.nn.Identity)}


def model_facts(entry: dict) -> dict:
    """Width, depth, patch size, prefix tokens and extracted layers of a model entry."""
    if "baseline" in entry:
        p = int(entry.get("patch_size", 16))
        dim = 3 * p * p if entry["baseline"] == "pixels" else 64  # oracle: a few dozen channels
        return {"patch_size": p, "dim": dim, "depth": 0, "mlp_hidden": 0, "prefix": 0,
                "has_cls": False, "final_norm": False, "n_layers": 1}
    base = entry["timm"].split(".")[0]
    f = dict(_timm_arch(base, tuple(sorted((entry.get("kwargs") or {}).items()))))
    layers = entry.get("layers", "all")
    f["n_layers"] = (f["depth"] + int(f["final_norm"])) if layers == "all" else len(layers)
    return f


def vit_flop(f: dict, grid: tuple[int, int]) -> float:
    """Forward FLOPs of one image: patch embedding + per block qkv, proj, MLP, attention."""
    if not f["depth"]:
        return 0.0
    P = grid[0] * grid[1]
    N, D, H, p = P + f["prefix"], f["dim"], f["mlp_hidden"], f["patch_size"]
    block = 2 * N * D * 3 * D + 2 * N * D * D + 2 * 2 * N * D * H + 2 * 2 * N * N * D
    return 2.0 * P * 3 * p * p * D + f["depth"] * block


def vit_mparams(f: dict) -> float:
    """Millions of weights of the blocks and patch embedding (what building the model inits)."""
    D, H, p = f["dim"], f["mlp_hidden"], f["patch_size"]
    return (f["depth"] * (4 * D * D + 2 * D * H) + 3 * p * p * D) / 1e6


def grid_of(img_size, patch: int) -> tuple[int, int]:
    from patchlens.models.resolve import input_geometry

    return input_geometry(img_size, patch)[1]


# ----------------------------------------------------------------------------- tasks

def fewshot_parts(p: dict, counts: dict, entry: dict, grid, C: int) -> dict:
    """Few-shot segmentation of one layer and variant, in its three costs: ``knn`` FLOPs (every
    query patch against every support patch), ``probe`` FLOPs (the linear probe: per L-BFGS
    evaluation, about one per iteration, the two (patches x C) x (C x K+1) matmuls, then the
    query logits) and ``pixels`` (pixel x class values upsampled and arg-maxed per query image
    and head), each summed over the seeds."""
    K = n_classes(entry)
    n_sup = min(counts.get(p["support_split"], 0), p["n_shots"] * K)
    n_query = counts.get(p["query_split"], 0)
    ns, nq = n_sup * grid[0] * grid[1], n_query * grid[0] * grid[1]
    heads = set(p["heads"])
    seeds = len(p["seeds"])
    from patchlens.models.resolve import input_size

    h, w = input_size(entry.get("img_size", 224), 1)
    pixels = seeds * len(heads) * n_query * h * w * (K + 1)
    # the two interpolation products per pixel x class (on a GPU they are its FLOPs)
    out = {"knn": 0.0, "probe": 0.0, "pixels": pixels, "pixel_flop": pixels * 2.0 * sum(grid)}
    if "knn" in heads:
        out["knn"] = seeds * 2.0 * nq * ns * C
    if "linear" in heads:
        out["probe"] = seeds * (p["linear_iters"] * 2 * 2.0 * ns * C * (K + 1)
                                + 2.0 * nq * C * (K + 1))
    return out


def task_flop(task: str, p: dict, counts: dict, entry: dict, grid, C: int) -> float:
    """FLOPs of one layer and one variant of a task (the matmuls of its protocol)."""
    P = grid[0] * grid[1]
    if task == "fewshot_seg":
        return sum(fewshot_parts(p, counts, entry, grid, C)[k] for k in ("knn", "probe"))
    if task == "lowshot_cls":
        K = n_classes(entry)
        nq = counts.get(p["query_split"], 0)
        pool = (counts.get(p["support_split"], 0) + nq) * P * C
        knn = sum(2.0 * nq * min(s * K, counts.get(p["support_split"], 0)) * C
                  for s in p["n_shots"])
        return pool + len(p["seeds"]) * len(p["features"]) * knn
    if task == "instance_id":
        n = counts.get(p["split"], 0)
        objs = n * OBJECTS_PER_IMAGE
        return n * P * C * 2.0 + 2.0 * objs * objs * C
    if task == "retrieval":
        nq = counts.get(p["query_split"], 0)
        return 2.0 * nq * counts.get(p["gallery_split"], 0) * P * C
    if task == "tracking":
        frames = counts.get(p["split"], 0)
        videos = max(1, min(n_videos(entry), frames))
        per_video = frames / videos
        scored = max(0, int(per_video) - (2 if p["skip_last_frame"] else 1))
        return videos * sum(propagate_flop(grid, 1 + min(t - 1, p["n_last_frames"]),
                                           p["size_mask_neighborhood"], C)
                            for t in range(1, scored + 1))
    if task == "keypoints":
        pairs = n_pairs(entry, counts)
        from patchlens.models.resolve import input_size

        h, w = input_size(entry.get("img_size", 224), 1)
        kp = SPAIR_KEYPOINTS_PER_PAIR
        return pairs * kp * (2.0 * P * C + 8.0 * h * w)
    from patchlens.tasks.registry import get_task

    flop = get_task(task).flop  # a task registered with its own cost model
    if flop is not None:
        return float(flop(p, counts, entry, grid, C))
    return 2.0 * sum(counts.values()) * P * C  # none: one pass over every token of the data set


# ----------------------------------------------------------------------------- the plan

def rule_threads(config: dict, rule: str) -> int:
    """Threads of a rule's jobs (the one home of the workflow's ``threads:``): the BLAS, OpenMP
    and torch threads a job runs with (Snakemake sets OMP_NUM_THREADS and friends to it)."""
    if rule in FIXED_THREADS:
        return FIXED_THREADS[rule]
    if rule in MODEL_RULES:
        return int((config.get("extraction") or {}).get("threads", 4))
    return int((config.get("evaluation") or {}).get("threads", 4))


# a job row's costs beyond FLOPs and bytes (see job_seconds), 0 where a rule has none
ROW_COSTS = ("render_mpix", "probe_flop", "pixels", "pixel_flop", "mparams", "mask_pixels",
             "elements")


def _stage():
    return {"jobs": 0, "flop": 0.0, "bytes_written": 0.0, "bytes_read": 0.0}


def feature_bytes(f: dict, n_images: int, grid) -> float:
    P = grid[0] * grid[1]
    return n_images * f["n_layers"] * (P + int(f["has_cls"])) * f["dim"] * 2.0


def plan(config: dict, results: str | os.PathLike = "results") -> dict:
    """Per stage (rule) jobs, FLOPs and bytes; per job rows for the cost drivers; disk.

    Returns ``{"stages": {rule: {...}}, "jobs": [...], "disk_bytes": ..., "disk_bytes_temp": ...,
    "features": {(model, dataset): bytes}}`` (hours are added by :func:`add_hours`).
    """
    results = Path(results)
    stages: dict[str, dict] = {}
    rows: list[dict] = []
    feats: dict[tuple[str, str], float] = {}
    counts = {d: split_counts(e, results / "data" / d / "manifest.csv")
              for d, e in config["datasets"].items()}

    def add(rule, model, dataset, what, flop=0.0, written=0.0, read=0.0, jobs=1, mem=0.0,
            **costs):
        s = stages.setdefault(rule, _stage())
        s["jobs"] += jobs
        s["flop"] += flop
        s["bytes_written"] += written
        s["bytes_read"] += read
        rows.append({"rule": rule, "model": model, "dataset": dataset, "what": what,
                     "flop": flop, "bytes_written": written, "bytes_read": read, "mem_bytes": mem,
                     "threads": rule_threads(config, rule), **dict.fromkeys(ROW_COSTS, 0.0),
                     **costs, "startup": "torch" if rule in MODEL_RULES else "python"})

    for d, e in config["datasets"].items():
        n = sum(counts[d].values())
        h, w = grid_of(e.get("img_size", 224), 1)
        render = 0.0
        if e["source"] == "scenes":  # generated here, at the generator's own image size
            render = n * scenes_params(e)["image_size"] ** 2 / 1e6
        add("prepare_dataset", "-", d, "prepare", written=n * h * w * IMAGE_BYTES_PER_PIXEL,
            render_mpix=render)

    facts = {m: model_facts(e) for m, e in config["models"].items()}
    for m, e in config["models"].items():
        f = facts[m]
        for d in model_datasets(config, m):
            de = config["datasets"][d]
            grid = grid_of(de.get("img_size", 224), f["patch_size"])
            n = sum(counts[d].values())
            size = feature_bytes(f, n, grid)
            feats[(m, d)] = size
            h, w = grid[0] * f["patch_size"], grid[1] * f["patch_size"]
            batch = config.get("extraction", {}).get("batch_size", 16)
            act = batch * (grid[0] * grid[1] + f["prefix"]) * max(f["dim"], 1) * 4 * 24
            add("extract_features", m, d, "extract", flop=n * vit_flop(f, grid), written=size,
                read=n * h * w * IMAGE_BYTES_PER_PIXEL, mem=act, mparams=vit_mparams(f))

    pairs_variance = set()
    for task, te in config["tasks"].items():
        p = task_params(config, task)
        variants = task_variants(config, task)
        for d in te["datasets"]:
            de = config["datasets"][d]
            for m in config["models"]:
                if d not in model_datasets(config, m):
                    continue
                f = facts[m]
                grid = grid_of(de.get("img_size", 224), f["patch_size"])
                # every layer is read once, whole (patchlens.evaluate.LayerView): the file
                read = feature_bytes(f, sum(counts[d].values()), grid)
                layer_mem = read / max(f["n_layers"], 1) * 2  # float16 layer + float32 chunks
                per = f["n_layers"] * len(variants)
                flop = per * task_flop(task, p, counts[d], de, grid, f["dim"])
                extra = {}
                if task == "fewshot_seg":  # the probe and the upsampling have rates of their own
                    parts = fewshot_parts(p, counts[d], de, grid, f["dim"])
                    extra = {"probe_flop": per * parts["probe"], "pixels": per * parts["pixels"],
                             "pixel_flop": per * parts["pixel_flop"]}
                if task == "tracking":  # every scored frame: upsample, arg-max, J&F per object
                    H, W = mask_size(de)
                    extra = {"mask_pixels": per * counts[d].get(p["split"], 0) * H * W
                             * (video_objects(de) + 1)}
                add(task, m, d, task, flop=flop, read=read, mem=layer_mem, **extra)
                if any(needs_stats(v) for v in variants):
                    pairs_variance.add((m, d))
    for m, d in sorted(pairs_variance):
        f, de = facts[m], config["datasets"][d]
        grid = grid_of(de.get("img_size", 224), f["patch_size"])
        sup = [s for s in config.get("variance", {}).get("split", ["train"]) if s in counts[d]]
        n = sum(counts[d][s] for s in sup)
        add("channel_variance", m, d, "variance", read=feature_bytes(f, n, grid),
            written=f["n_layers"] * f["dim"] * 8.0 * 2,  # a memory-bound reduction, no matmul
            elements=n * f["n_layers"] * grid[0] * grid[1] * f["dim"])

    analyses = config.get("analyses") or {}
    if "attention" in analyses:
        ap = analysis_params(config, "attention")
        for d in analyses["attention"]["datasets"]:
            de = config["datasets"][d]
            for m in analysis_models(config, "attention"):
                if d not in model_datasets(config, m):
                    continue
                f = facts[m]
                grid = grid_of(de.get("img_size", 224), f["patch_size"])
                n = min(sum(counts[d].values()), ap["max_images"] or 10 ** 9)
                N = grid[0] * grid[1] + f["prefix"]
                add("attention_stats", m, d, "attention", flop=n * vit_flop(f, grid)
                    + n * f["depth"] * N * N * 4.0,
                    written=f["depth"] * N * N * 8.0, mparams=vit_mparams(f))
    if "cka" in analyses:
        cp = analysis_params(config, "cka")
        for d in analyses["cka"]["datasets"]:
            de = config["datasets"][d]
            models = [m for m in analysis_models(config, "cka", timm_only=False)
                      if d in model_datasets(config, m)]
            n = sum(counts[d].values())
            samples = n * (cp["max_patches_per_image"] + 1)
            flop, read = 0.0, 0.0
            for m in models:  # minibatch HSIC: one (b, b) Gram per layer and batch
                f = facts[m]
                grid = grid_of(de.get("img_size", 224), f["patch_size"])
                read += feats.get((m, d), 0.0)
                flop += 2.0 * samples * cp["batch_size"] * f["dim"] * f["n_layers"]
            L = sum(facts[m]["n_layers"] for m in models)
            flop += 2.0 * samples * cp["batch_size"] * L * L
            add("cka", "all", d, "cka", flop=flop, read=read)

    kept = sum(feats.values())
    largest = max(feats.values(), default=0.0)
    cka_peak = 0.0
    for d in (analyses.get("cka") or {}).get("datasets", []):
        cka_peak = max(cka_peak, sum(v for (m, dd), v in feats.items() if dd == d))
    small = sum(s["bytes_written"] for r, s in stages.items() if r != "extract_features")
    return {"stages": stages, "jobs": rows, "features": feats,
            "disk_bytes": kept + small,
            # temp(): every feature file is deleted once its consumers are done; the least peak
            # a run can reach is the largest set that must coexist (one file, or all the models
            # of a CKA data set); more cores keep more files alive at once
            "disk_bytes_temp": max(largest, cka_peak) + small,
            "keep_features": bool(config.get("keep_features", True))}


# ----------------------------------------------------------------------------- hours

def probe(seconds: float = 3.0, path: str | os.PathLike | None = None,
          scenes: bool = True) -> dict:
    """This machine's fp32 matmul GFLOP/s (numpy BLAS, every core), sequential read MB/s (a
    128 MiB file written, dropped from the page cache where the OS allows, read back), the
    start-up of a job's process (a fresh interpreter importing what the scripts import, without
    and with torch + timm) and, with ``scenes``, the s per megapixel of generating them."""
    import subprocess
    import sys

    import numpy as np

    from patchlens.evaluation.davis_metrics import jf_labels
    from patchlens.evaluation.knn import l2_normalize
    from patchlens.evaluation.probes import LinearProbe
    from patchlens.evaluation.upsample import resize_bilinear
    from patchlens.features.channel_stats import merge_moments
    from patchlens.tasks.tracking import labels_to_mask, propagate

    m, c, n = 4096, 384, 8192  # the shape of the k-NN that dominates a study: queries x support
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, c), dtype=np.float32)
    b = rng.standard_normal((c, n), dtype=np.float32)
    a @ b  # warm up the BLAS threads
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds * 0.6:
        a @ b
        reps += 1
    gflops = 2.0 * m * c * n * reps / (time.perf_counter() - t0) / 1e9
    size = 128 * 2 ** 20
    with tempfile.NamedTemporaryFile(dir=path, delete=True) as tmp:
        tmp.write(os.urandom(size))
        tmp.flush()
        os.fsync(tmp.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(tmp.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        with open(tmp.name, "rb", buffering=0) as fh:
            while fh.read(8 * 2 ** 20):
                pass
        mbps = size / (time.perf_counter() - t0) / 1e6
    base = "import snakemake.script, numpy, pandas, h5py, patchlens.evaluate"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", base], check=True, capture_output=True)
    startup = {"python": time.perf_counter() - t0}
    # the model rules: the same imports with torch and timm, then the forward rate of a real ViT
    # (ViT-S/16 at 448 px, 2 images, every core): torch's kernels, not numpy's BLAS
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _FORWARD_PROBE], check=True, capture_output=True,
                         text=True).stdout
    fwd = json.loads(out.strip().splitlines()[-1])
    per_image = fwd["forward_s"] / fwd["images"]
    # imports, then the first forward pass's extra time (kernel selection, allocation)
    startup["torch"] = (time.perf_counter() - t0 - fwd["after_imports_s"]
                        + max(0.0, fwd["first_s"] - per_image))
    forward = vit_flop(model_facts({"timm": "vit_small_patch16_224"}), (28, 28)) / per_image / 1e9
    build = fwd["build_s"] / fwd["mparams"]
    n, k = 4096, 21  # the linear probe of few-shot segmentation: support patches x C -> K + 1
    xs, ys = a, rng.integers(0, k, m)
    LinearProbe.fit(xs[:256], ys[:256], k, 1e-4, 3)  # warm-up
    t0 = time.perf_counter()
    fit = LinearProbe.fit(xs, ys, k, 1e-4, 30)
    lbfgs = fit.n_evals * 2 * 2.0 * n * c * k / (time.perf_counter() - t0) / 1e9
    scores = rng.random((28, 28, k), dtype=np.float32)
    resize_bilinear(scores, (448, 448)).argmax(-1)
    t0 = time.perf_counter()
    for _ in range(5):
        resize_bilinear(scores, (448, 448)).argmax(-1)
    upsample = (time.perf_counter() - t0) / (5 * 448 * 448 * k) * 1e9
    x16 = rng.standard_normal((8 * 784, c), dtype=np.float32).astype(np.float16)
    runs = []
    for _ in range(4):  # the first allocates; the median of the others
        t0 = time.perf_counter()
        merge_moments(0, np.zeros(c), np.zeros(c), x16.astype(np.float32))
        runs.append(time.perf_counter() - t0)
    reduce = float(np.median(runs[1:])) / x16.size * 1e9
    # DINO's label propagation at DAVIS shape: 30 x 54 patches, 8 context frames, 3 labels
    ctx = l2_normalize(rng.standard_normal((8 * 30 * 54, c), dtype=np.float32)).reshape(8, -1, c)
    labels = rng.random((8, 30 * 54, 3), dtype=np.float32)
    propagate(ctx[0], ctx, labels, (30, 54), 12, 5, 0.1)
    t0 = time.perf_counter()
    propagate(ctx[1], ctx, labels, (30, 54), 12, 5, 0.1)
    propagation = propagate_flop((30, 54), 8, 12, c) / (time.perf_counter() - t0) / 1e9

    soft = rng.random((30, 54, 3), dtype=np.float32)  # a DAVIS frame: 2 objects + background
    gt = np.zeros((480, 854), np.int64)
    gt[100:300, 100:400], gt[250:450, 500:800] = 1, 2
    t0 = time.perf_counter()
    for _ in range(3):
        jf_labels(gt, labels_to_mask(soft, gt.shape), 2)
    track = (time.perf_counter() - t0) / (3 * 480 * 854 * 3) * 1e9
    render = RENDER_S_PER_MPIX
    if scenes:  # a warm-up set, then 8 + 24 crops at 256 px with the generator's default classes
        from patchlens.data.scenes import generate_scenes

        sets = {k: 0 for k in ("n_val", "n_gallery", "n_videos", "n_pairs", "n_shots_max")}
        with tempfile.TemporaryDirectory(dir=path) as out:
            generate_scenes(Path(out) / "warm", {**sets, "image_size": 64, "n_train": 1})
            t0 = time.perf_counter()
            generate_scenes(Path(out) / "probe", {**sets, "image_size": 256, "n_train": 8})
            n = sum(split_counts({"source": "scenes", "params": {
                **sets, "image_size": 256, "n_train": 8}}).values())
            render = (time.perf_counter() - t0) / (n * 256 * 256 / 1e6)
    return {"cpu_gflops": gflops, "read_mbps": mbps, "cores": os.cpu_count() or 1,
            "forward_gflops": forward, "build_s_per_mparam": build, "lbfgs_gflops": lbfgs,
            "upsample_ns": upsample, "track_ns": track, "propagate_gflops": propagation,
            "reduce_ns": reduce,
            "startup_s": startup, "render_s_per_mpix": render}


_FORWARD_PROBE = """
import json, time
t0 = time.perf_counter()
import snakemake.script, numpy, pandas, h5py, patchlens.evaluate, torch, timm
t1 = time.perf_counter()
m = timm.create_model("vit_small_patch16_224", pretrained=False, dynamic_img_size=True).eval()
tb = time.perf_counter()
x = torch.randn(2, 3, 448, 448)
with torch.inference_mode():
    m.forward_features(x[:1])
    t2 = time.perf_counter()
    m.forward_features(x)
    t3 = time.perf_counter()
print(json.dumps({"after_imports_s": t3 - t1, "build_s": tb - t1, "first_s": t2 - tb,
                  "forward_s": t3 - t2, "images": 2,
                  "mparams": sum(p.numel() for p in m.parameters()) / 1e6}))
"""


def job_seconds(job: dict, rates: dict, cores: int, gpu: tuple[float, float] | None = None
                ) -> float:
    """Wall seconds of one job row at ``rates`` (:data:`DEFAULT_RATES` keys plus ``cpu_gflops``
    and ``read_mbps``; GFLOP/s of all ``cores``): start-up + building its model + generating
    data + tracking's mask scoring + the channel-statistics reduction (numpy, on a GPU node too)
    + its FLOPs at its rule's rate (:data:`RULE_RATE`), the linear probe's ``probe_flop`` at
    ``lbfgs_gflops``, both at its threads' share of the cores, + upsampled ``pixels`` + bytes at
    the disk rate. ``gpu`` = (TFLOP/s, GB/s): the same job on a GPU node, the upsampling on the
    device as its ``pixel_flop``."""
    fixed = (rates["startup_s"][job.get("startup", "python")]
             + job.get("render_mpix", 0.0) * rates["render_s_per_mpix"]
             + job.get("mparams", 0.0) * rates["build_s_per_mparam"]
             + job.get("mask_pixels", 0.0) * rates["track_ns"] * 1e-9
             + job.get("elements", 0.0) * rates["reduce_ns"] * 1e-9)
    nbytes = job["bytes_read"] + job["bytes_written"]
    if gpu is not None:
        tflops, gbps = gpu
        return (fixed + (job["flop"] + job.get("pixel_flop", 0.0)) / (tflops * 1e12)
                + nbytes / (gbps * 1e9))
    share = min(job.get("threads", cores), cores) / cores
    rate = rates.get(RULE_RATE.get(job["rule"], "cpu_gflops")) or rates["cpu_gflops"]
    probe = job.get("probe_flop", 0.0)  # the linear probe's matmuls, at its own rate
    return (fixed + job.get("pixels", 0.0) * rates["upsample_ns"] * 1e-9
            + (job["flop"] - probe) / (rate * share * 1e9)
            + probe / (rates["lbfgs_gflops"] * share * 1e9) + nbytes / (rates["read_mbps"] * 1e6))


def add_hours(result: dict, cpu_gflops: float, read_mbps: float, gpu_tflops: float = GPU_TFLOPS,
              disk_gbps: float = DISK_GBPS, cores: int | None = None, **probed) -> dict:
    """``hours_cpu`` / ``hours_gpu`` of every job row (its wall time, :func:`job_seconds`) and
    stage (machine hours: the jobs' core-hours over ``cores``; on a GPU the jobs in series).
    ``probed``: any of :data:`DEFAULT_RATES` (what :func:`probe` measured)."""
    unknown = set(probed) - set(DEFAULT_RATES)
    if unknown:
        raise TypeError(f"add_hours: unknown rate(s) {sorted(unknown)}")
    cores = cores or os.cpu_count() or 1
    rates = {**DEFAULT_RATES, **{k: v for k, v in probed.items() if v is not None},
             "cpu_gflops": cpu_gflops, "read_mbps": read_mbps}
    for s in result["stages"].values():
        s["hours_cpu"] = s["hours_gpu"] = 0.0
    for job in result["jobs"]:
        job["hours_cpu"] = job_seconds(job, rates, cores) / 3600
        job["hours_gpu"] = job_seconds(job, rates, cores, (gpu_tflops, disk_gbps)) / 3600
        s = result["stages"][job["rule"]]
        s["hours_cpu"] += job["hours_cpu"] * min(job.get("threads", cores), cores) / cores
        s["hours_gpu"] += job["hours_gpu"]
    result["hours_cpu"] = sum(s["hours_cpu"] for s in result["stages"].values())
    result["hours_gpu"] = sum(s["hours_gpu"] for s in result["stages"].values())
    result["rates"] = {**rates, "forward_gflops": rates["forward_gflops"] or cpu_gflops,
                       "startup_s": dict(rates["startup_s"]), "cores": cores,
                       "gpu_tflops": gpu_tflops, "disk_gbps": disk_gbps}
    return result


# A conservative per-core fp32 matmul rate for the runtime a cluster job asks for (the
# development machine's probe gives about 85 per core; older or busy nodes give less).
CORE_GFLOPS = 30.0


def job_resources(result: dict, rule: str, model: str, dataset: str,
                  core_gflops: float = CORE_GFLOPS, read_mbps: float = 500.0,
                  floor_mb: int = 2000, floor_min: int = 10, gpu_tflops: float | None = None,
                  disk_gbps: float = DISK_GBPS) -> dict:
    """``mem_mb`` / ``runtime`` (minutes) of one job from the plan: 1.5x its in-memory working
    set plus 1 GB (never below ``floor_mb``), 2x its planned seconds with the threads it
    declares at ``core_gflops`` each (on a GPU at ``gpu_tflops``), never below ``floor_min``;
    the rule resources of the workflow are derived here."""
    for r in result["jobs"]:
        if r["rule"] == rule and r["model"] == model and r["dataset"] == dataset:
            t = r.get("threads", 1)
            rates = {**DEFAULT_RATES, "cpu_gflops": core_gflops * t, "read_mbps": read_mbps}
            secs = job_seconds(r, rates, t, None if gpu_tflops is None else (gpu_tflops,
                                                                             disk_gbps))
            return {"mem_mb": max(floor_mb, int(1.5 * r["mem_bytes"] / 2 ** 20) + 1000),
                    "runtime": max(floor_min, int(math.ceil(2 * secs / 60)))}
    return {"mem_mb": floor_mb, "runtime": floor_min}


def check_disk(result: dict, results: str | os.PathLike, keep: bool = True,
               free: float | None = None) -> dict:
    """Planned bytes of the feature files not yet on disk vs the free space under ``results``;
    ConfigError with one line (need, free, largest contributors, how to shrink) when short."""
    import shutil

    results = Path(results)
    missing = {k: v for k, v in result["features"].items()
               if not (results / "features" / k[0] / f"{k[1]}.h5").exists()}
    if keep:
        need = sum(missing.values())
    else:
        need = min(sum(missing.values()), result["disk_bytes_temp"])
    if free is None:
        probe_dir = results
        while not probe_dir.exists() and probe_dir != probe_dir.parent:
            probe_dir = probe_dir.parent
        free = shutil.disk_usage(probe_dir).free
    if need > free:
        top = sorted(missing.items(), key=lambda kv: -kv[1])[:3]
        names = ", ".join(f"{m}/{d} {human_bytes(b)}" for (m, d), b in top)
        raise ConfigError(
            f"disk: the feature files need {human_bytes(need)} under {results}/ but "
            f"{human_bytes(free)} is free (largest: {names}); shrink with a model's `layers:`, "
            "the data sets' max_images / max_sequences, fewer models, or keep_features: false; "
            "override with --config disk_check=False")
    return {"need": need, "free": free}


def drivers(result: dict, top: int = 10) -> list[dict]:
    """The job rows that cost the most CPU hours (model x data set x stage)."""
    return sorted(result["jobs"], key=lambda r: -r.get("hours_cpu", r["flop"]))[:top]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} PB"


def format_plan(result: dict, top: int = 10) -> str:
    """The plan as a text table: stages, totals, disk both ways, the largest cost drivers."""
    r = result["rates"]
    lines = [f"{'stage':18s} {'jobs':>5s} {'PFLOP':>9s} {'written':>10s} {'read':>10s} "
             f"{'h (cpu)':>10s} {'h (gpu)':>9s}"]
    for rule, s in sorted(result["stages"].items(), key=lambda kv: -kv[1]["hours_cpu"]):
        lines.append(f"{rule:18s} {s['jobs']:5d} {s['flop'] / 1e15:9.3f} "
                     f"{human_bytes(s['bytes_written']):>10s} {human_bytes(s['bytes_read']):>10s} "
                     f"{s['hours_cpu']:10.1f} {s['hours_gpu']:9.2f}")
    lines.append(f"total: {result['hours_cpu']:.1f} h on this machine "
                 f"({r['cpu_gflops']:.0f} GFLOP/s matmul, {r['read_mbps']:.0f} MB/s read); "
                 f"{result['hours_gpu']:.1f} h on a GPU ({r['gpu_tflops']:g} TFLOP/s, "
                 f"{r['disk_gbps']:g} GB/s disk)")
    lines.append(f"disk: {human_bytes(result['disk_bytes'])} with keep_features: true, "
                 f"{human_bytes(result['disk_bytes_temp'])} peak with keep_features: false")
    lines.append("largest cost drivers (model x data set x stage):")
    for d in drivers(result, top):
        lines.append(f"  {d['hours_cpu']:9.1f} h cpu {d['hours_gpu']:8.2f} h gpu  "
                     f"{d['model']:16s} {d['dataset']:11s} {d['rule']}")
    return "\n".join(lines)
