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

Hours = FLOPs / matmul rate + bytes / disk rate: on this machine from a probe of a few seconds
(:func:`probe`), on a GPU from ``gpu_tflops`` / ``disk_gbps``. The FLOP counts are the dominant
matmuls only; ``benchmarks/rehearsal.py`` measures how far the real jobs are from them.
"""
from __future__ import annotations

import functools
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
}
DAVIS_SEQUENCES = 30
SPAIR_PAIRS = {"test": 12234, "val": 5384, "trn": 53340, "train": 53340}
SPAIR_KEYPOINTS_PER_PAIR = 10      # SPair-71k test: about 10 annotated keypoint pairs per pair
CLASSES = {"voc2012": 20, "imagenette": 10}        # foreground classes drawn for support
OBJECTS_PER_IMAGE = 2              # scenes: objects per still image (about; generator default)
IMAGE_BYTES_PER_PIXEL = 0.3        # decoded-image read cost of a JPEG/PNG on disk, per pixel

GPU_TFLOPS = 50.0   # default: sustained fp32 matmul of a current data-centre GPU (H100 SXM: 67 peak)
DISK_GBPS = 2.0     # default: NVMe read/write of a GPU node, GB/s


# ----------------------------------------------------------------------------- data sets

def split_counts(entry: dict, manifest: Path | None = None) -> dict[str, int]:
    """Images per manifest split of one ``datasets.<name>`` entry."""
    if manifest is not None and Path(manifest).exists():
        import pandas as pd

        return {str(k): int(v) for k, v in
                pd.read_csv(manifest, usecols=["split"])["split"].value_counts().items()}
    src, p = entry["source"], entry.get("params") or {}
    if src == "scenes":
        from patchlens.data.scenes import resolve_params

        r = resolve_params(p)
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


def n_classes(entry: dict) -> int:
    if entry["source"] == "scenes":
        from patchlens.data.scenes import resolve_params

        r = resolve_params(entry.get("params") or {})
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


def grid_of(img_size, patch: int) -> tuple[int, int]:
    from patchlens.models.resolve import input_geometry

    return input_geometry(img_size, patch)[1]


# ----------------------------------------------------------------------------- tasks

def task_flop(task: str, p: dict, counts: dict, entry: dict, grid, C: int) -> float:
    """FLOPs of one layer and one variant of a task (the matmuls of its protocol)."""
    P = grid[0] * grid[1]
    if task == "fewshot_seg":
        K = n_classes(entry)
        n_sup = min(counts.get(p["support_split"], 0), p["n_shots"] * K)
        ns, nq = n_sup * P, counts.get(p["query_split"], 0) * P
        heads = set(p["heads"])
        per_seed = 0.0
        if "knn" in heads:
            per_seed += 2.0 * nq * ns * C
        if "linear" in heads:
            per_seed += p["linear_iters"] * 3 * 2.0 * ns * C * (K + 1) + 2.0 * nq * C * (K + 1)
        return len(p["seeds"]) * per_seed
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
        r = p["size_mask_neighborhood"]
        window = P if not r else min(P, (2 * r + 1) ** 2)
        return 2.0 * frames * (p["n_last_frames"] + 1) * P * window * C
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

    def add(rule, model, dataset, what, flop=0.0, written=0.0, read=0.0, jobs=1, mem=0.0):
        s = stages.setdefault(rule, _stage())
        s["jobs"] += jobs
        s["flop"] += flop
        s["bytes_written"] += written
        s["bytes_read"] += read
        rows.append({"rule": rule, "model": model, "dataset": dataset, "what": what,
                     "flop": flop, "bytes_written": written, "bytes_read": read, "mem_bytes": mem})

    for d, e in config["datasets"].items():
        n = sum(counts[d].values())
        h, w = grid_of(e.get("img_size", 224), 1)
        add("prepare_dataset", "-", d, "prepare", written=n * h * w * IMAGE_BYTES_PER_PIXEL)

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
                read=n * h * w * IMAGE_BYTES_PER_PIXEL, mem=act)

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
                flop = f["n_layers"] * len(variants) * task_flop(task, p, counts[d], de, grid,
                                                                 f["dim"])
                add(task, m, d, task, flop=flop, read=read, mem=layer_mem)
                if any(needs_stats(v) for v in variants):
                    pairs_variance.add((m, d))
    for m, d in sorted(pairs_variance):
        f, de = facts[m], config["datasets"][d]
        grid = grid_of(de.get("img_size", 224), f["patch_size"])
        sup = [s for s in config.get("variance", {}).get("split", ["train"]) if s in counts[d]]
        n = sum(counts[d][s] for s in sup)
        add("channel_variance", m, d, "variance", flop=4.0 * n * f["n_layers"] * grid[0] * grid[1]
            * f["dim"], read=feature_bytes(f, n, grid),
            written=f["n_layers"] * f["dim"] * 8.0 * 2)

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
                    written=f["depth"] * N * N * 8.0)
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

def probe(seconds: float = 3.0, path: str | os.PathLike | None = None) -> dict:
    """This machine's fp32 matmul GFLOP/s (numpy BLAS, every core) and sequential read MB/s
    (a 128 MiB file written, dropped from the page cache where the OS allows, read back)."""
    import numpy as np

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
    return {"cpu_gflops": gflops, "read_mbps": mbps, "cores": os.cpu_count() or 1}


def add_hours(result: dict, cpu_gflops: float, read_mbps: float, gpu_tflops: float = GPU_TFLOPS,
              disk_gbps: float = DISK_GBPS) -> dict:
    """``hours_cpu`` / ``hours_gpu`` of every stage and job row (compute + I/O, in series)."""
    def hours(flop, nbytes):
        cpu = (flop / (cpu_gflops * 1e9) + nbytes / (read_mbps * 1e6)) / 3600
        gpu = (flop / (gpu_tflops * 1e12) + nbytes / (disk_gbps * 1e9)) / 3600
        return cpu, gpu

    for item in list(result["stages"].values()) + result["jobs"]:
        item["hours_cpu"], item["hours_gpu"] = hours(item["flop"],
                                                     item["bytes_read"] + item["bytes_written"])
    result["hours_cpu"] = sum(s["hours_cpu"] for s in result["stages"].values())
    result["hours_gpu"] = sum(s["hours_gpu"] for s in result["stages"].values())
    result["rates"] = {"cpu_gflops": cpu_gflops, "read_mbps": read_mbps,
                       "gpu_tflops": gpu_tflops, "disk_gbps": disk_gbps}
    return result


def job_resources(result: dict, rule: str, model: str, dataset: str, cpu_gflops: float = 100.0,
                  read_mbps: float = 500.0, floor_mb: int = 2000, floor_min: int = 10) -> dict:
    """``mem_mb`` / ``runtime`` (minutes) of one job from the plan: 1.5x its in-memory working
    set plus 1 GB (never below ``floor_mb``), 2x its planned CPU time (never below
    ``floor_min``); the rule resources of the workflow are derived here."""
    for r in result["jobs"]:
        if r["rule"] == rule and r["model"] == model and r["dataset"] == dataset:
            secs = r["flop"] / (cpu_gflops * 1e9) + (r["bytes_read"] + r["bytes_written"]) / (
                read_mbps * 1e6)
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
