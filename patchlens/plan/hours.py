"""Seconds and hours of every job at a machine's rates; the rule resources a cluster job asks
for; the free-disk check before extraction.

A job's seconds = process start-up (the interpreter and the imports of its script, with torch and
timm for the rules that build a model) + generating the data (``scenes`` only; a download's time
depends on the network and is not counted) + FLOPs / the rate of the threads it declares (numpy's
fp32 matmul for the evaluators; a real ViT forward pass for the rules that run a model) +
bytes / disk rate: on this machine from a probe of a few seconds (:func:`patchlens.plan.probe`),
on a GPU from :data:`GPU` (float32 and float16 tensor-core rates, device memory, disk, kernel
launches; the float16 rate and the memory rate are assumptions until a device run measures
them). A stage's hours on this machine are its jobs' core-seconds over the cores (the scheduler
keeps every core busy); on a GPU, its jobs' seconds one after another.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from patchlens.errors import ConfigError

# Start-up of a job's process when not probed (:func:`probe`): seconds for the interpreter,
# numpy/pandas/h5py and Snakemake's script preamble ("python"), and with torch + timm ("torch"),
# plus generating ``scenes`` images (s per megapixel). Measured on the development machine, quiet
# (python -c "from patchlens.plan import probe; print(probe())"); the probe replaces them.
STARTUP_S = {"python": 1.0, "torch": 5.3}
RENDER_S_PER_MPIX = 0.5
# ... and the few-shot linear probe's rate (its skinny matmuls and L-BFGS steps, GFLOP/s of all
# cores) and the ns per pixel x class of upsampling and arg-maxing a score map (only the pixels
# whose four cells disagree are mixed: patchlens.evaluation.upsample.bilinear_argmax; on the
# probe's map, 13% of the cells: 0.44-0.62 ns inside the probe, 1.02-1.13 ns timed alone, quiet,
# 2026-12-05; the larger is the default; the full upsampling cost 5.7)
LBFGS_GFLOPS = 26.0
BUILD_S_PER_MPARAM = 0.02  # building a timm model (random init; then weights are loaded)
UPSAMPLE_NS = 1.1
TRACK_NS = 28.0  # tracking: ns per mask pixel x channel to upsample, arg-max and score (J&F)
REDUCE_NS = 6.0  # channel statistics: ns per float16 token value read and reduced
# ns per similarity value and variant of one job, all cores: the shared similarity code's pass
# beyond its products (patchlens.evaluation.similarity: per cache-sized tile of the product,
# the chain's in-place block products, the division by the norms, faiss's top-k heaps, one
# worker per thread). The probe times that code (patchlens.plan.probe._select_ns) minus its
# two products into a warm block; on the development machine, quiet (2026-12-05, both cores):
# 0.68-0.82 ns in eight runs (0.88-1.01 before the tiles)
SELECT_NS = 0.75

# what :func:`probe` measures beyond the matmul and read rates (keywords of add_hours), and the
# value each takes when not probed; forward_gflops None: extraction at the matmul rate
DEFAULT_RATES = {"forward_gflops": None, "build_s_per_mparam": BUILD_S_PER_MPARAM,
                 "lbfgs_gflops": LBFGS_GFLOPS, "upsample_ns": UPSAMPLE_NS, "track_ns": TRACK_NS,
                 "select_ns": SELECT_NS, "reduce_ns": REDUCE_NS,
                 "startup_s": STARTUP_S, "render_s_per_mpix": RENDER_S_PER_MPIX}
PROBED = tuple(DEFAULT_RATES)
# the rate of a rule's main FLOPs (the others: numpy's matmul, cpu_gflops)
RULE_RATE = {"extract_features": "forward_gflops", "attention_stats": "forward_gflops"}

# the probed rates that grow with the cores (a job's share is its threads over the cores), and
# the probed times per item that shrink with them (the per-variant passes run on the job's
# threads: patchlens.device.job_threads)
CORE_RATES = ("cpu_gflops", "forward_gflops", "lbfgs_gflops")
CORE_TIMES = ("select_ns",)

GPU_TFLOPS = 50.0   # default: sustained fp32 matmul of a current data-centre GPU (H100 SXM: 67 peak)
DISK_GBPS = 2.0     # default: NVMe read/write of a GPU node, GB/s
# The similarity products on float16 tensor cores (float32 accumulation): ASSUMED at half an
# H100 SXM's dense float16 figure (989 TFLOP/s) until a device run measures one; the memory-
# bound passes at half its 3.35 TB/s. Printed as assumptions with the plan.
GPU_FP16_TFLOPS = 400.0
GPU = {"tflops": GPU_TFLOPS, "fp16_tflops": GPU_FP16_TFLOPS, "disk_gbps": DISK_GBPS,
       "mem_gbps": 1675.0,  # device memory, GB/s
       # per similarity value and variant, float32: the block product added in the GEMM's
       # epilogue (read + write), the division by the norms (read + write), the top-k's read
       "select_bytes": 20.0,
       "mask_bytes": 32.0,  # per mask pixel x channel: upsample, arg-max, J&F (max-pool)
       "stats_bytes": 4.0,  # per token value: the extractor's statistics on the device
       "launch_us": 10.0}  # per kernel launch (tracking's many small bands)
# A conservative per-core fp32 matmul rate for the runtime a cluster job asks for (the
# development machine's probe gives about 85 per core; older or busy nodes give less).
CORE_GFLOPS = 30.0


def gpu_rates(tflops: float = GPU_TFLOPS, disk_gbps: float = DISK_GBPS,
              fp16_tflops: float = GPU_FP16_TFLOPS, **other) -> dict:
    """The GPU node's rates (:data:`GPU`) with the given ones replaced."""
    return {**GPU, **other, "tflops": tflops, "disk_gbps": disk_gbps, "fp16_tflops": fp16_tflops}


def job_seconds(job: dict, rates: dict, cores: int, gpu: dict | None = None) -> float:
    """Wall seconds of one job row at ``rates`` (:data:`DEFAULT_RATES` keys plus ``cpu_gflops``
    and ``read_mbps``; GFLOP/s of all ``cores``): start-up + building its model + generating
    data + the mask scoring of ``mask_pixels`` (numpy, on a GPU node too) + the channel
    statistics' ``elements`` + bytes at the disk rate, and

    * on this machine: its FLOPs at its rule's rate (:data:`RULE_RATE`; the similarity products
      ``sim_flop`` at the matmul rate) and the linear probe's ``probe_flop`` at
      ``lbfgs_gflops``, both at its threads' share of the cores, + upsampled ``pixels``,
      similarity values ``select`` and ``device_mask_pixels`` at their ns each;
    * with ``gpu`` (:func:`gpu_rates`): ``sim_flop`` at ``fp16_tflops`` (tensor cores), the
      other FLOPs and the upsampling's ``pixel_flop`` at ``tflops`` (float32), ``select``,
      ``device_mask_pixels`` and ``elements`` as bytes at ``mem_gbps``, ``launches`` at
      ``launch_us``, bytes at ``disk_gbps``."""
    fixed = (rates["startup_s"][job.get("startup", "python")]
             + job.get("render_mpix", 0.0) * rates["render_s_per_mpix"]
             + job.get("mparams", 0.0) * rates["build_s_per_mparam"]
             + job.get("mask_pixels", 0.0) * rates["track_ns"] * 1e-9)
    nbytes = job["bytes_read"] + job["bytes_written"]
    sim = job.get("sim_flop", 0.0)
    if gpu is not None:
        device_bytes = (job.get("select", 0.0) * gpu["select_bytes"]
                        + job.get("device_mask_pixels", 0.0) * gpu["mask_bytes"]
                        + job.get("elements", 0.0) * gpu["stats_bytes"])
        return (fixed + (job["flop"] - sim + job.get("pixel_flop", 0.0)) / (gpu["tflops"] * 1e12)
                + sim / (gpu["fp16_tflops"] * 1e12) + device_bytes / (gpu["mem_gbps"] * 1e9)
                + job.get("launches", 0.0) * gpu["launch_us"] * 1e-6
                + nbytes / (gpu["disk_gbps"] * 1e9))
    share = min(job.get("threads", cores), cores) / cores
    rate = rates.get(RULE_RATE.get(job["rule"], "cpu_gflops")) or rates["cpu_gflops"]
    probe = job.get("probe_flop", 0.0)  # the linear probe's matmuls, at its own rate
    ns = (job.get("pixels", 0.0) * rates["upsample_ns"] + job.get("select", 0.0)
          * rates["select_ns"] / share + job.get("device_mask_pixels", 0.0) * rates["track_ns"]
          + job.get("elements", 0.0) * rates["reduce_ns"])
    return (fixed + ns * 1e-9 + (job["flop"] - probe) / (rate * share * 1e9)
            + probe / (rates["lbfgs_gflops"] * share * 1e9) + nbytes / (rates["read_mbps"] * 1e6))


def add_hours(result: dict, cpu_gflops: float, read_mbps: float, gpu_tflops: float = GPU_TFLOPS,
              disk_gbps: float = DISK_GBPS, cores: int | None = None,
              gpu_fp16_tflops: float = GPU_FP16_TFLOPS, **probed) -> dict:
    """``hours_cpu`` / ``hours_gpu`` of every job row (its wall time, :func:`job_seconds`) and
    stage (machine hours: the jobs' core-hours over ``cores``; on a GPU the jobs in series).
    ``probed``: any of :data:`DEFAULT_RATES` (what :func:`probe` measured)."""
    unknown = set(probed) - set(DEFAULT_RATES)
    if unknown:
        raise TypeError(f"add_hours: unknown rate(s) {sorted(unknown)}")
    cores = cores or os.cpu_count() or 1
    rates = {**DEFAULT_RATES, **{k: v for k, v in probed.items() if v is not None},
             "cpu_gflops": cpu_gflops, "read_mbps": read_mbps}
    gpu = gpu_rates(gpu_tflops, disk_gbps, gpu_fp16_tflops)
    for s in result["stages"].values():
        s["hours_cpu"] = s["hours_gpu"] = 0.0
    for job in result["jobs"]:
        job["hours_cpu"] = job_seconds(job, rates, cores) / 3600
        job["hours_gpu"] = job_seconds(job, rates, cores, gpu) / 3600
        s = result["stages"][job["rule"]]
        s["hours_cpu"] += job["hours_cpu"] * min(job.get("threads", cores), cores) / cores
        s["hours_gpu"] += job["hours_gpu"]
    result["hours_cpu"] = sum(s["hours_cpu"] for s in result["stages"].values())
    result["hours_gpu"] = sum(s["hours_gpu"] for s in result["stages"].values())
    result["rates"] = {**rates, "forward_gflops": rates["forward_gflops"] or cpu_gflops,
                       "startup_s": dict(rates["startup_s"]), "cores": cores,
                       "gpu_tflops": gpu_tflops, "disk_gbps": disk_gbps,
                       "gpu_fp16_tflops": gpu_fp16_tflops, "gpu_mem_gbps": gpu["mem_gbps"]}
    return result


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
            secs = job_seconds(r, rates, t, None if gpu_tflops is None else
                               gpu_rates(gpu_tflops, disk_gbps))
            return {"mem_mb": max(floor_mb, int(1.5 * r["mem_bytes"] / 2 ** 20) + 1000),
                    "runtime": max(floor_min, int(math.ceil(2 * secs / 60)))}
    return {"mem_mb": floor_mb, "runtime": floor_min}


def check_disk(result: dict, results: str | os.PathLike, keep: bool = True,
               free: float | None = None) -> dict:
    """Planned bytes of the feature files not yet on disk vs the free space under ``results``;
    ConfigError with one line (need, free, largest contributors, how to shrink) when short."""
    from patchlens.plan.report import human_bytes

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
