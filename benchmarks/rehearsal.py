"""Rehearsal: run the real study's shapes on generated data and compare every job with the plan.

Takes ``benchmarks/rehearsal.yaml`` (random-init ViT-S/16, ViT-B/16, ViT-B/8 at 448 px and
ViT-B/16 at 480x832; few-shot segmentation and tracking with the real protocols and all 7
variants), divides its image counts by ``--cut``, runs the workflow up to the score files with
Snakemake, and for each job compares the measured wall time (Snakemake's ``benchmark:`` file),
peak RSS (against the ``mem_mb`` the job declared), bytes written (the files) and bytes read (the
evaluator's own count, and ``io_in``) with :func:`patchlens.plan.plan` for the same config and
this machine's probed rates. The measured/planned ratio per rule then scales the plan of
``config.yaml`` into an extrapolated study cost.

    python benchmarks/rehearsal.py --cut 200 --models vit_s16 vit_b16 vit_b8 --cores 2

Every job runs alone with all ``--cores`` threads (as the per-job seconds of the plan assume):
the extraction and evaluation threads of the config and every planned rule's threads are set to
``--cores``. Small cuts mean minutes to hours per job for ViT-B/8 on a CPU; at large cuts the
small jobs are their process start-up, which the plan counts from the probe.
``--compare-only`` recomputes the tables from a finished run (and its recorded rates).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from patchlens.config import evaluation_jobs  # noqa: E402
from patchlens.startup import load_config, validate  # noqa: E402
from patchlens.plan import CORE_RATES, CORE_TIMES, PROBED, add_hours, job_resources, plan, probe  # noqa: E402

REAL = {"train": 1464, "val": 1449, "frames": 1999, "videos": 30}


def cut_config(cfg: dict, cut: float, models: list[str] | None, variants: list[str] | None):
    """The rehearsal config with image counts divided by ``cut`` (at least a few of each)."""
    cfg = copy.deepcopy(cfg)
    still, video = cfg["datasets"]["still"]["params"], cfg["datasets"]["video"]["params"]
    still["n_train"] = max(4, math.ceil(REAL["train"] / cut))
    still["n_val"] = max(2, math.ceil(REAL["val"] / cut))
    frames = max(4, math.ceil(REAL["frames"] / cut))
    video["n_videos"] = max(1, min(REAL["videos"], math.ceil(REAL["videos"] / cut)))
    video["n_frames"] = max(3, frames // video["n_videos"])
    if models:
        cfg["models"] = {m: e for m, e in cfg["models"].items() if m in models}
    if variants:
        cfg["variants"] = list(variants)
    return cfg


def one_job_at_a_time(cfg: dict, cores: int) -> tuple[dict, list[str]]:
    """The config and Snakemake's ``--set-threads`` with every planned job on all ``cores``."""
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("extraction", {})["threads"] = cores
    cfg.setdefault("evaluation", {})["threads"] = cores
    rules = ["prepare_dataset", "extract_features", "channel_variance", *cfg["tasks"]]
    return cfg, ["--set-threads", *(f"{r}={cores}" for r in rules)]


def read_benchmarks(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        parts = tsv.relative_to(results / "benchmarks" / rule).with_suffix("").parts
        b = pd.read_csv(tsv, sep="\t").iloc[-1]
        model, dataset = (parts + ("-",))[:2] if len(parts) == 1 else parts[:2]
        if len(parts) == 1:
            model, dataset = "-", parts[0]
        rows.append({"rule": rule, "model": model, "dataset": dataset, "s": float(b["s"]),
                     "max_rss_mb": float(b["max_rss"]), "io_in_mb": float(b["io_in"]),
                     "io_out_mb": float(b["io_out"])})
    return pd.DataFrame(rows)


def read_counts(results: Path) -> dict:
    """Bytes read per evaluator job, from the log line of patchlens.evaluate."""
    import re

    out = {}
    for log in (results / "logs").rglob("*.log"):
        m = re.search(r"read ([0-9.]+) MB of tokens .* \(file ([0-9.]+) MB", log.read_text())
        if m:
            rule = log.relative_to(results / "logs").parts[0]
            model, dataset = log.relative_to(results / "logs" / rule).with_suffix("").parts[:2]
            out[(rule, model, dataset)] = (float(m.group(1)) * 1e6, float(m.group(2)) * 1e6)
    return out


def planned(cfg: dict, results, rates: dict) -> dict:
    """The plan of ``cfg`` at the probed rates, start-up and render speed of this machine."""
    return add_hours(plan(cfg, results), rates["cpu_gflops"], rates["read_mbps"],
                     cores=rates["cores"], **{k: rates[k] for k in PROBED if k in rates})


def compare(cfg: dict, workdir: Path, rates: dict) -> pd.DataFrame:
    results = workdir / "results"
    p = planned(cfg, results, rates)
    bench = read_benchmarks(results)
    reads = read_counts(results)
    rows = []
    for job in p["jobs"]:
        hit = bench[(bench.rule == job["rule"]) & (bench.model == job["model"])
                    & (bench.dataset == job["dataset"])]
        if hit.empty:
            continue
        b = hit.iloc[0]
        written = job["bytes_written"]
        if job["rule"] == "extract_features":
            f = results / "features" / job["model"] / f"{job['dataset']}.h5"
            measured_w = f.stat().st_size if f.exists() else float("nan")
        else:
            measured_w = float("nan")
        read, size = reads.get((job["rule"], job["model"], job["dataset"]), (float("nan"),) * 2)
        res = job_resources(p, job["rule"], job["model"], job["dataset"])
        rows.append({"rule": job["rule"], "model": job["model"], "dataset": job["dataset"],
                     "planned_s": job["hours_cpu"] * 3600, "measured_s": b["s"],
                     "ratio_s": b["s"] / max(job["hours_cpu"] * 3600, 1e-9),
                     "planned_written_MB": written / 1e6, "measured_written_MB": measured_w / 1e6,
                     "planned_read_MB": job["bytes_read"] / 1e6, "read_MB": read / 1e6,
                     "read_over_file": read / size if size == size else float("nan"),
                     "io_in_MB": b["io_in_mb"], "max_rss_MB": b["max_rss_mb"],
                     "mem_mb": res["mem_mb"]})
    return pd.DataFrame(rows)


def extrapolate(table: pd.DataFrame, study: Path, rates: dict) -> pd.DataFrame:
    """Plan of the full study per rule, scaled by the rehearsal's measured/planned time."""
    p = planned(load_config(study), "/nonexistent", rates)
    ratio = table.groupby("rule").apply(lambda g: g.measured_s.sum() / g.planned_s.sum(),
                                        include_groups=False)
    rows = []
    for rule, s in p["stages"].items():
        r = float(ratio.get(rule, float("nan")))
        rows.append({"rule": rule, "jobs": s["jobs"], "planned_h_cpu": s["hours_cpu"],
                     "measured_over_planned": r, "extrapolated_h_cpu": s["hours_cpu"] * r
                     if r == r else s["hours_cpu"], "planned_h_gpu": s["hours_gpu"]})
    return pd.DataFrame(rows).sort_values("planned_h_cpu", ascending=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "rehearsal.yaml"))
    ap.add_argument("--study", default=str(ROOT / "config.yaml"), help="config to extrapolate to")
    ap.add_argument("--cut", type=float, default=50.0, help="image counts divided by this")
    ap.add_argument("--models", nargs="*", help="subset of the rehearsal's models")
    ap.add_argument("--variants", nargs="*", help="subset of the variants (default all 7)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", default=str(ROOT / "results" / "rehearsal"))
    ap.add_argument("--compare-only", action="store_true",
                    help="no run: the tables of the finished run in --workdir, at its rates")
    args = ap.parse_args()

    work = Path(args.workdir)
    record = work / "rehearsal.json"
    if args.compare_only:
        cfg = yaml.safe_load((work / "config.yaml").read_text())
        recorded = json.loads(record.read_text())
        rates, args.cut = recorded["rates"], recorded["cut"]
    else:
        cfg, set_threads = one_job_at_a_time(
            cut_config(yaml.safe_load(Path(args.config).read_text()), args.cut, args.models,
                       args.variants), args.cores)
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    full = validate(copy.deepcopy(cfg))
    if not args.compare_only:
        targets = [f"results/scores/{t}/{m}/{d}/{v}.csv" for t, m, d, v in evaluation_jobs(full)]
        cmd = [str(Path(sys.executable).with_name("snakemake")), "--snakefile",
               str(ROOT / "Snakefile"), "--directory", str(work), "--configfile",
               str(work / "config.yaml"), "--cores", str(args.cores), *targets, *set_threads]
        rates = probe(path=work)  # all cores; the jobs run on --cores of them
        for k in CORE_RATES:
            rates[k] *= min(args.cores, rates["cores"]) / rates["cores"]
        for k in CORE_TIMES:
            rates[k] *= rates["cores"] / min(args.cores, rates["cores"])
        rates["cores"] = args.cores
        record.write_text(json.dumps({"rates": rates, "cut": args.cut}, indent=1))
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    table = compare(full, work, rates)
    ext = extrapolate(table, Path(args.study), rates)
    pd.set_option("display.width", 200)
    print(f"rates: {rates['cpu_gflops']:.0f} GFLOP/s matmul, {rates['read_mbps']:.0f} MB/s read;"
          f" cut {args.cut:g}")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print()
    print(ext.to_markdown(index=False, floatfmt=".3g"))
    record.write_text(json.dumps(
        {"rates": rates, "cut": args.cut, "jobs": table.to_dict("records"),
         "extrapolation": ext.to_dict("records")}, indent=1, default=float))


if __name__ == "__main__":
    main()
