"""The study's job rows: one per job the workflow runs (rule x model x data set), with its
FLOPs, bytes and the other costs :func:`patchlens.plan.hours.job_seconds` turns into seconds.

A task's cost is its own (``TaskSpec.flop`` in the task's module, :func:`task_cost`); this
module only multiplies it by the layers each evaluator job reads, adds the data preparation, the
extraction and the channel statistics, and the analyses (:func:`analysis_rows`).
"""
from __future__ import annotations

import os
from numbers import Number
from pathlib import Path

from patchlens.analysis.registry import all_analyses
from patchlens.config import (analysis_models, analysis_params, model_datasets, task_params,
                              task_variants)
from patchlens.data.sizes import scenes_params, split_counts
from patchlens.features.variants import needs_stats
from patchlens.plan.facts import feature_bytes, grid_of, model_facts, vit_flop, vit_mparams

IMAGE_BYTES_PER_PIXEL = 0.3        # decoded-image read cost of a JPEG/PNG on disk, per pixel

# Rules with a fixed thread count (the others: ``extraction.threads`` for the rules that run a
# model, ``evaluation.threads`` for the task evaluators); the rules read their ``threads:`` here.
# An analysis's rule declares its own (``AnalysisSpec.threads``, ``reads``).
FIXED_THREADS = {"prepare_dataset": 1, "channel_variance": 1,
                 **{s.job_rule: s.threads for s in all_analyses() if s.threads is not None}}
# the rules whose scripts import torch and timm (they run a model)
MODEL_RULES = ("extract_features", *(s.job_rule for s in all_analyses() if s.reads == "images"))

# a job row's costs beyond FLOPs and bytes (see job_seconds), 0 where a rule has none
ROW_COSTS = ("render_mpix", "probe_flop", "pixels", "pixel_flop", "mparams", "mask_pixels",
             "elements", "sim_flop", "select", "device_mask_pixels", "launches")


def task_cost(task: str, p: dict, counts: dict, entry: dict, grid, C: int,
              variants=("raw",)) -> dict:
    """Costs of one layer of a task's evaluator job (every variant): its ``TaskSpec.flop``, a
    dict of ``flop`` and :data:`ROW_COSTS` (a number is read as the FLOPs of one layer and one
    variant); a task without one: one pass over every token of the data set per variant."""
    from patchlens.tasks.registry import get_task

    fn = get_task(task).flop
    if fn is None:
        return {"flop": len(variants) * 2.0 * sum(counts.values()) * grid[0] * grid[1] * C}
    out = fn(p, counts, entry, grid, C, variants)
    if isinstance(out, Number):
        return {"flop": len(variants) * float(out)}
    unknown = set(out) - {"flop", *ROW_COSTS}
    if unknown:
        raise ValueError(f"task {task!r}: flop() returned unknown cost(s) {sorted(unknown)}")
    return dict(out)


def task_flop(task: str, p: dict, counts: dict, entry: dict, grid, C: int,
              variants=("raw",)) -> float:
    """FLOPs of one layer of a task (``variants``, default the raw features only)."""
    return task_cost(task, p, counts, entry, grid, C, variants)["flop"]


def rule_threads(config: dict, rule: str) -> int:
    """Threads of a rule's jobs (the one home of the workflow's ``threads:``): the BLAS, OpenMP
    and torch threads a job runs with (Snakemake sets OMP_NUM_THREADS and friends to it)."""
    if rule in FIXED_THREADS:
        return FIXED_THREADS[rule]
    if rule in MODEL_RULES:
        return int((config.get("extraction") or {}).get("threads", 4))
    return int((config.get("evaluation") or {}).get("threads", 4))


class Study:
    """The rows and per-stage sums being built for one config."""

    def __init__(self, config: dict, results: Path | None, stats_in_extraction: bool = True):
        self.config, self.stages, self.rows, self.feats = config, {}, [], {}
        self.stats_in_extraction = stats_in_extraction
        self.counts = {d: split_counts(e, results and results / "data" / d / "manifest.csv")
                       for d, e in config["datasets"].items()}
        self.facts = {m: model_facts(e) for m, e in config["models"].items()}

    def grid(self, model: str, dataset: str):
        entry = self.config["datasets"][dataset]
        return grid_of(entry.get("img_size", 224), self.facts[model]["patch_size"])

    def add(self, rule, model, dataset, what, flop=0.0, written=0.0, read=0.0, jobs=1, mem=0.0,
            **costs):
        s = self.stages.setdefault(rule, {"jobs": 0, "flop": 0.0, "bytes_written": 0.0,
                                          "bytes_read": 0.0})
        s["jobs"] += jobs
        s["flop"] += flop
        s["bytes_written"] += written
        s["bytes_read"] += read
        self.rows.append({"rule": rule, "model": model, "dataset": dataset, "what": what,
                          "flop": flop, "bytes_written": written, "bytes_read": read,
                          "mem_bytes": mem, "threads": rule_threads(self.config, rule),
                          **dict.fromkeys(ROW_COSTS, 0.0), **costs,
                          "startup": "torch" if rule in MODEL_RULES else "python"})


def data_rows(st: Study) -> None:
    """Preparing every data set (generating ``scenes``), then extracting every model's features."""
    config = st.config
    for d, e in config["datasets"].items():
        n = sum(st.counts[d].values())
        h, w = grid_of(e.get("img_size", 224), 1)
        render = 0.0
        if e["source"] == "scenes":  # generated here, at the generator's own image size
            render = n * scenes_params(e)["image_size"] ** 2 / 1e6
        st.add("prepare_dataset", "-", d, "prepare", written=n * h * w * IMAGE_BYTES_PER_PIXEL,
               render_mpix=render)
    for m in config["models"]:
        f = st.facts[m]
        for d in model_datasets(config, m):
            grid = st.grid(m, d)
            n = sum(st.counts[d].values())
            size = feature_bytes(f, n, grid)
            st.feats[(m, d)] = size
            h, w = grid[0] * f["patch_size"], grid[1] * f["patch_size"]
            batch = config.get("extraction", {}).get("batch_size", 16)
            act = batch * (grid[0] * grid[1] + f["prefix"]) * max(f["dim"], 1) * 4 * 24
            st.add("extract_features", m, d, "extract", flop=n * vit_flop(f, grid), written=size,
                   read=n * h * w * IMAGE_BYTES_PER_PIXEL, mem=act, mparams=vit_mparams(f))


def task_rows(st: Study) -> None:
    """One evaluator job per (task, model, data set): every layer read once, whole
    (FeatureStore.layer_view), every variant from that read; then the channel statistics
    of the (model, data set) pairs whose variants need them."""
    config, pairs_variance = st.config, set()
    for task, te in config["tasks"].items():
        p = task_params(config, task)
        variants = task_variants(config, task)
        for d in te["datasets"]:
            de = config["datasets"][d]
            for m in config["models"]:
                if d not in model_datasets(config, m):
                    continue
                f, grid = st.facts[m], st.grid(m, d)
                read = feature_bytes(f, sum(st.counts[d].values()), grid)
                layer_mem = read / max(f["n_layers"], 1) * 2  # float16 layer + float32 chunks
                cost = task_cost(task, p, st.counts[d], de, grid, f["dim"], variants)
                per_job = {k: f["n_layers"] * v for k, v in cost.items()}
                st.add(task, m, d, task, read=read, mem=layer_mem, n_layers=f["n_layers"],
                       n_seeds=len(p.get("seeds") or [0]), **per_job)
                if any(needs_stats(v) for v in variants):
                    pairs_variance.add((m, d))
    for m, d in sorted(pairs_variance):
        f, grid = st.facts[m], st.grid(m, d)
        sup = [s for s in config.get("variance", {}).get("split", ["train"])
               if s in st.counts[d]]
        n = sum(st.counts[d][s] for s in sup)
        small = f["n_layers"] * f["dim"] * 8.0 * 2  # mean and variance per layer and channel
        elements = n * f["n_layers"] * grid[0] * grid[1] * f["dim"]
        if st.stats_in_extraction:  # accumulated while writing; the rule reads them back
            st.add("channel_variance", m, d, "variance", read=small, written=small)
            extract = next(r for r in st.rows if r["rule"] == "extract_features"
                           and (r["model"], r["dataset"]) == (m, d))
            extract["elements"] += elements
        else:  # re-reads the split's tokens: a memory-bound reduction, no matmul
            st.add("channel_variance", m, d, "variance", read=feature_bytes(f, n, grid),
                   written=small, elements=elements)


def plan(config: dict, results: str | os.PathLike | None = "results",
         stats_in_extraction: bool = True) -> dict:
    """Per stage (rule) jobs, FLOPs and bytes; per job rows for the cost drivers; disk.

    ``stats_in_extraction``: the channel statistics (``zscore``, ``drop{m}``) are accumulated by
    the extractor while it writes a feature file (its ``elements``), and ``channel_variance``
    reads only the small per-split statistics; False: that rule re-reads the split's tokens.

    Returns ``{"stages": {rule: {...}}, "jobs": [...], "disk_bytes": ..., "disk_bytes_temp": ...,
    "features": {(model, dataset): bytes}}`` (hours are added by
    :func:`patchlens.plan.hours.add_hours`). ``results`` None: the image counts from the config
    alone, never from a prepared manifest.
    """

    st = Study(config, None if results is None else Path(results), stats_in_extraction)
    data_rows(st)
    task_rows(st)
    analysis_rows(st)
    feats = st.feats
    kept = sum(feats.values())
    largest = max(feats.values(), default=0.0)
    joint_peak = 0.0  # an analysis with one job per data set reads all its models' files
    for spec in all_analyses():
        if spec.per_model or spec.reads != "features":
            continue
        for d in ((config.get("analyses") or {}).get(spec.name) or {}).get("datasets", []):
            joint_peak = max(joint_peak, sum(v for (m, dd), v in feats.items() if dd == d))
    small = sum(s["bytes_written"] for r, s in st.stages.items() if r != "extract_features")
    return {"stages": st.stages, "jobs": st.rows, "features": feats,
            "disk_bytes": kept + small,
            # temp(): every feature file is deleted once its consumers are done; the least peak
            # a run can reach is the largest set that must coexist (one file, or all the models
            # of a data set one analysis job reads, as CKA); more cores keep more files alive
            "disk_bytes_temp": max(largest, joint_peak) + small,
            "keep_features": bool(config.get("keep_features", True))}


# the analyses' rows: each analysis's own cost model (``AnalysisSpec.flop`` in
# :mod:`patchlens.analysis.specs`, as ``TaskSpec.flop`` for tasks), called once per job with the
# job's models' facts; an analysis without one adds no row (a negligible cost)
_ANALYSIS_COSTS = {"flop", "written", "read", "mem", *ROW_COSTS}


def analysis_rows(st) -> None:
    """The rows of every configured analysis that declares a cost: one per (model, data set)
    or, for an analysis with one job per data set, one per data set (model ``all``)."""
    config = st.config
    analyses = config.get("analyses") or {}
    for spec in all_analyses():
        if spec.flop is None or spec.name not in analyses:
            continue
        p = analysis_params(config, spec.name)
        for d in analyses[spec.name]["datasets"]:
            models = [m for m in analysis_models(config, spec.name, timm_only=spec.timm_only)
                      if d in model_datasets(config, m)]
            for group in ([m] for m in models) if spec.per_model else [models]:
                facts = [{**st.facts[m], "grid": st.grid(m, d),
                          "feature_bytes": st.feats.get((m, d), 0.0)} for m in group]
                cost = spec.flop(p, st.counts[d], facts)
                unknown = set(cost) - _ANALYSIS_COSTS
                if unknown:
                    raise ValueError(f"analysis {spec.name!r}: flop() returned unknown cost(s) "
                                     f"{sorted(unknown)}")
                st.add(spec.job_rule, group[0] if spec.per_model else "all", d, spec.name,
                       **cost)
