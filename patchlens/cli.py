"""Console entry point ``patchlens``: ``patchlens plan CONFIG [--json]``."""
from __future__ import annotations

import argparse
import json
import os
import sys

from patchlens.errors import PatchlensError


def _plan(args) -> int:
    from patchlens.config import load_config
    from patchlens.plan import (CORE_RATES, CORE_TIMES, DEFAULT_RATES, add_hours, format_plan, max_runtime,
                                plan, probe, split_summary)

    config = load_config(args.config)
    from patchlens.startup import check_values  # the values too, as the Snakefile's driver does

    check_values(config)
    result = plan(config, args.results)
    if args.cpu_gflops and args.read_mbps:  # no probe: the stated rates, the others' defaults
        rates = {**DEFAULT_RATES, "cpu_gflops": args.cpu_gflops, "read_mbps": args.read_mbps}
    else:
        scenes = any(e["source"] == "scenes" for e in config["datasets"].values())
        rates = probe(path=None, scenes=scenes)
        rates.update({k: v for k, v in (("cpu_gflops", args.cpu_gflops),
                                         ("read_mbps", args.read_mbps)) if v})
    if args.forward_gflops:
        rates["forward_gflops"] = args.forward_gflops
    cores = os.cpu_count() or 1
    if args.cores:  # linear scaling of the probe's all-core rates to another core count
        for k in CORE_RATES:
            if rates.get(k):
                rates[k] *= args.cores / cores
        for k in CORE_TIMES:
            if rates.get(k):
                rates[k] *= cores / args.cores
        cores = args.cores
    add_hours(result, rates["cpu_gflops"], rates["read_mbps"], args.gpu_tflops, args.disk_gbps,
              cores=cores, gpu_fp16_tflops=args.gpu_fp16_tflops,
              **{k: rates[k] for k in DEFAULT_RATES if k in rates})
    limit = max_runtime(config)  # evaluator jobs a cluster accepts (patchlens.plan.job_splits)
    result["cluster"] = {"cpu": split_summary(result, limit),
                         "gpu": split_summary(result, limit, args.gpu_tflops)}
    if args.json:
        out = {k: v for k, v in result.items() if k not in ("features",)}
        out["features"] = {f"{m}/{d}": b for (m, d), b in result["features"].items()}
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_plan(result, args.top))
    return 0


def main(argv=None) -> int:
    from patchlens.plan import DISK_GBPS, GPU_FP16_TFLOPS, GPU_TFLOPS

    ap = argparse.ArgumentParser(prog="patchlens")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="cost of every stage of a config before it runs")
    p.add_argument("config")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--results", default="results",
                   help="results directory (a prepared manifest there gives the image counts)")
    p.add_argument("--gpu-tflops", type=float, default=GPU_TFLOPS,
                   help=f"sustained fp32 matmul rate of the GPU (default {GPU_TFLOPS:g})")
    p.add_argument("--gpu-fp16-tflops", type=float, default=GPU_FP16_TFLOPS,
                   help="float16 tensor-core rate of the GPU's similarity products (default "
                        f"{GPU_FP16_TFLOPS:g}: assumed, half an H100's dense figure)")
    p.add_argument("--disk-gbps", type=float, default=DISK_GBPS,
                   help=f"disk rate of the GPU node in GB/s (default {DISK_GBPS:g})")
    p.add_argument("--cpu-gflops", type=float, help="skip the probe's matmul rate")
    p.add_argument("--read-mbps", type=float, help="skip the probe's read rate")
    p.add_argument("--forward-gflops", type=float,
                   help="ViT forward rate of the model rules (default: probed, else --cpu-gflops)")
    p.add_argument("--cores", type=int, help="scale the CPU rate to this many cores")
    p.add_argument("--top", type=int, default=10, help="cost drivers to print")
    args = ap.parse_args(argv)
    try:
        return _plan(args)
    except PatchlensError as exc:
        print(f"patchlens: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
