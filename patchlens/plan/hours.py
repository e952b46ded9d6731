"""Seconds and hours of every job at a machine's rates; the rule resources a cluster job asks
for; the free-disk check before extraction.

A job's seconds = process start-up (the interpreter and the imports of its script, with torch and
timm for the rules that build a model) + generating the data (``scenes`` only; a download's time
depends on the network and is not counted) + FLOPs / the rate of the threads it declares (numpy's
fp32 matmul for the evaluators; a real ViT forward pass for the rules that run a model) +
bytes / disk rate: on this machine from a probe of a few seconds (:func:`patchlens.plan.probe`),
on a GPU from ``gpu_tflops`` / ``disk_gbps``. A stage's hours on this machine are its jobs'
core-seconds over the cores (the scheduler keeps every core busy); on a GPU, its jobs' seconds
one after another.
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
# A conservative per-core fp32 matmul rate for the runtime a cluster job asks for (the
# development machine's probe gives about 85 per core; older or busy nodes give less).
CORE_GFLOPS = 30.0


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
