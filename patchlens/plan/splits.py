"""Evaluator jobs a cluster accepts: where the plan says a job would run longer than
``cluster.max_runtime`` (minutes), the pieces it splits into (issue 20, item 5).

A piece is a group of layers (each still read once, by one piece only) and, where one layer
alone is too long, a group of seeds of that layer; where one layer and one seed is still too long
and the task allows it (``TaskSpec.query_pieces``: few-shot segmentation), a part of its query
images. Every cost of a job row scales with its layers and seeds (a task's cost is per layer,
summed over its seeds), and with its share of the query images except the linear probe's fit
(``probe_flop``, fitted on the support by every query part again); its bytes read scale with its
layers (a seed group or a query part reads its layer again, whole); start-up is paid by every
piece. A piece's runtime is what :func:`patchlens.plan.hours.job_resources` would ask for it, at
the threads the job declares.
"""
from __future__ import annotations

import math
import re

from patchlens.analysis.registry import all_analyses
from patchlens.config import task_spec
from patchlens.errors import ConfigError
from patchlens.plan.hours import CORE_GFLOPS, DISK_GBPS, job_resources
from patchlens.plan.rows import ROW_COSTS

DEFAULT_MAX_RUNTIME = 24 * 60  # minutes (schema default of cluster.max_runtime)
_SCALED = ("flop", *(k for k in ROW_COSTS if k not in ("render_mpix", "mparams")))


def max_runtime(config: dict) -> int:
    """``cluster.max_runtime`` of a config, in minutes (default 24 h)."""
    return int((config.get("cluster") or {}).get("max_runtime", DEFAULT_MAX_RUNTIME))


def piece_row(row: dict, n_layers: int, n_seeds: int, parts: int = 1) -> dict:
    """The job row of ``n_layers`` of the job's layers, ``n_seeds`` of its seeds and one of
    ``parts`` even parts of its query images."""
    L, S = max(1, row.get("n_layers", 1)), max(1, row.get("n_seeds", 1))
    f = n_layers / L * n_seeds / S
    out = {**row, **{k: row.get(k, 0.0) * f / parts for k in _SCALED},
           "bytes_read": row["bytes_read"] * n_layers / L, "n_layers": n_layers,
           "n_seeds": n_seeds}
    fit = row.get("probe_flop", 0.0) * f  # the probe's fit is paid by every query part
    out["flop"] += fit - fit / parts
    out["probe_flop"] = fit
    return out


def _runtime(row: dict, **rates) -> int:
    return job_resources({"jobs": [row]}, row["rule"], row["model"], row["dataset"],
                         **rates)["runtime"]


def _groups(n: int, size: int) -> list[list[int]]:
    """0..n-1 in consecutive groups of at most ``size``, as even as possible."""
    k = math.ceil(n / size)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def _spec(rule: str):
    try:
        return task_spec(rule)
    except ConfigError:  # not a task: nothing says its seeds or images are separable
        return None


def _seed_pieces(rule: str) -> bool:
    return getattr(_spec(rule), "seed_pieces", False)


def job_splits(result: dict, rule: str, model: str, dataset: str, limit: int,
               core_gflops: float = CORE_GFLOPS, gpu_tflops: float | None = None,
               disk_gbps: float = DISK_GBPS) -> list[tuple[list[int], list[int] | None]]:
    """Pieces ``(layers, seeds)`` of one evaluator job so that each one's planned runtime
    (minutes, :func:`~patchlens.plan.hours.job_resources`) is at most ``limit``: layer
    positions (0 .. n_layers-1 along the feature file's layer axis) in as few even groups as
    fit, and seed positions (into the task's ``seeds`` list) where one layer alone does not
    fit (None: every seed; only for a task whose ``TaskSpec.seed_pieces``). ``[(all layers,
    None)]`` when the whole job fits; a piece of one layer and one seed (or one layer, where seeds
    are not cut) is returned even if it does not fit (nothing smaller exists)."""
    row = next(r for r in result["jobs"]
               if (r["rule"], r["model"], r["dataset"]) == (rule, model, dataset))
    rates = {"core_gflops": core_gflops, "gpu_tflops": gpu_tflops, "disk_gbps": disk_gbps}
    L, S = max(1, row.get("n_layers", 1)), max(1, row.get("n_seeds", 1))
    by_seeds = S > 1 and _seed_pieces(rule)
    for size in range(L, 0, -1):
        groups = _groups(L, size)
        if (_runtime(piece_row(row, max(map(len, groups)), S), **rates) <= limit
                or (size == 1 and not by_seeds)):
            return [(g, None) for g in groups]
    for size in range(S, 0, -1):
        seeds = _groups(S, size)
        if _runtime(piece_row(row, 1, max(map(len, seeds))), **rates) <= limit or size == 1:
            return [([layer], g) for layer in range(L) for g in seeds]
    raise AssertionError("unreachable")


def query_parts(result: dict, rule: str, model: str, dataset: str, limit: int,
                core_gflops: float = CORE_GFLOPS, gpu_tflops: float | None = None,
                disk_gbps: float = DISK_GBPS, max_parts: int = 64) -> int:
    """Into how many even parts of its query images each smallest piece of :func:`job_splits`
    (one layer, one seed) is cut so that it fits ``limit``: 1 when it fits whole or the task
    cannot merge query parts (``TaskSpec.query_pieces`` None); at most ``max_parts``."""
    layers, seeds = job_splits(result, rule, model, dataset, limit, core_gflops, gpu_tflops,
                               disk_gbps)[0]
    row = next(r for r in result["jobs"]
               if (r["rule"], r["model"], r["dataset"]) == (rule, model, dataset))
    rates = {"core_gflops": core_gflops, "gpu_tflops": gpu_tflops, "disk_gbps": disk_gbps}
    n_seeds = len(seeds) if seeds is not None else max(1, row.get("n_seeds", 1))
    if getattr(_spec(rule), "query_pieces", None) is None:
        return 1
    for parts in range(1, max_parts + 1):
        if _runtime(piece_row(row, len(layers), n_seeds, parts), **rates) <= limit:
            return parts
    return max_parts


def job_pieces(result: dict, rule: str, model: str, dataset: str, limit: int,
               gpu_tflops: float | None = None) -> list[tuple[list[int], list[int] | None,
                                                              tuple[int, int] | None]]:
    """``(layers, seeds, query)`` of every piece of one evaluator job: :func:`job_splits`'s
    pieces, each cut into :func:`query_parts` parts ``query = (i, parts)`` of its query images
    where one layer and one seed alone is too long (None: every query image)."""
    splits = job_splits(result, rule, model, dataset, limit, gpu_tflops=gpu_tflops)
    parts = query_parts(result, rule, model, dataset, limit, gpu_tflops=gpu_tflops)
    if parts == 1:
        return [(layers, seeds, None) for layers, seeds in splits]
    return [(layers, seeds, (i, parts)) for layers, seeds in splits for i in range(parts)]


OTHER_RULES = ("prepare_dataset", "extract_features", "channel_variance",
               *(s.job_rule for s in all_analyses()))  # the rules that are not task evaluators


def split_summary(result: dict, limit: int, gpu_tflops: float | None = None) -> dict:
    """For ``patchlens plan``: the evaluator jobs whose runtime exceeds ``limit`` minutes, the
    pieces :func:`job_pieces` cuts them into, and the jobs whose smallest piece still exceeds
    it as ``(rule, model, dataset, minutes)``."""
    over, pieces, still = [], 0, []
    for r in result["jobs"]:
        if r["rule"] in OTHER_RULES:
            continue
        key = (r["rule"], r["model"], r["dataset"])
        if job_resources(result, *key, gpu_tflops=gpu_tflops)["runtime"] <= limit:
            continue
        over.append(key)
        parts = job_pieces(result, *key, limit, gpu_tflops=gpu_tflops)
        pieces += len(parts)
        layers, seeds, query = parts[0]
        piece = piece_row(r, len(layers), len(seeds) if seeds is not None else
                          r.get("n_seeds", 1), query[1] if query else 1)
        minutes = _runtime(piece, core_gflops=CORE_GFLOPS, gpu_tflops=gpu_tflops,
                           disk_gbps=DISK_GBPS)
        if minutes > limit:
            still.append((*key, minutes))
    return {"limit": limit, "jobs_over": len(over), "pieces": pieces, "still_over": still}


# -- the pieces in the workflow: a piece's name is its wildcard (rules/tasks.smk), e.g. "l0-3"
# (layer positions 0 to 3, every seed), "l5-5_s1-2" (layer 5, seed positions 1 to 2) or
# "l5-5_s1-1_q0of3" (layer 5, seed 1, the first of 3 parts of the query images)
PIECE_PATTERN = r"l\d+-\d+(?:_s\d+-\d+)?(?:_q\d+of\d+)?"


def piece_name(layers: list[int], seeds: list[int] | None = None,
               query: tuple[int, int] | None = None) -> str:
    """The name of a piece of consecutive layer (and seed) positions (:func:`job_pieces`)."""
    name = f"l{layers[0]}-{layers[-1]}"
    if seeds is not None:
        name += f"_s{seeds[0]}-{seeds[-1]}"
    return name if query is None else f"{name}_q{query[0]}of{query[1]}"


def parse_piece(name: str) -> tuple[list[int], list[int] | None, tuple[int, int] | None]:
    """``(layer positions, seed positions or None, query part (i, parts) or None)`` of a
    :func:`piece_name`."""
    m = re.fullmatch(r"l(\d+)-(\d+)(?:_s(\d+)-(\d+))?(?:_q(\d+)of(\d+))?", name)
    if m is None or (m.group(5) is not None and int(m.group(5)) >= int(m.group(6))):
        raise ValueError(f"not a piece name: {name!r}")
    a, b, c, d, i, n = m.groups()
    layers = list(range(int(a), int(b) + 1))
    seeds = None if c is None else list(range(int(c), int(d) + 1))
    return layers, seeds, None if i is None else (int(i), int(n))


def split_jobs(result: dict, limit: int, gpu_tflops: float | None = None) -> dict:
    """``{(rule, model, dataset): [piece name, ...]}`` of every evaluator job of the plan that
    :func:`job_pieces` cuts into more than one piece (the jobs not listed run whole)."""
    out = {}
    for r in result["jobs"]:
        if r["rule"] in OTHER_RULES:
            continue
        key = (r["rule"], r["model"], r["dataset"])
        parts = job_pieces(result, *key, limit, gpu_tflops=gpu_tflops)
        if len(parts) > 1:
            out[key] = [piece_name(*p) for p in parts]
    return out


def piece_resources(result: dict, rule: str, model: str, dataset: str, piece: str,
                    gpu_tflops: float | None = None) -> dict:
    """``mem_mb`` / ``runtime`` of one piece (:func:`piece_name`) of an evaluator job, as
    :func:`~patchlens.plan.hours.job_resources` asks them for a whole job."""
    row = next(r for r in result["jobs"]
               if (r["rule"], r["model"], r["dataset"]) == (rule, model, dataset))
    layers, seeds, query = parse_piece(piece)
    part = piece_row(row, len(layers), len(seeds) if seeds else max(1, row.get("n_seeds", 1)),
                     query[1] if query else 1)
    return job_resources({"jobs": [part]}, rule, model, dataset, gpu_tflops=gpu_tflops)


# A gather (the whole job's outputs from its pieces) reads the pieces' score rows and units and
# computes the bootstrap intervals, which the plan does not model: a fixed allowance, the whole
# job's memory (the units of every layer and seed at once).
GATHER_RUNTIME = 60  # minutes


def gather_resources(result: dict, rule: str, model: str, dataset: str) -> dict:
    """``mem_mb`` / ``runtime`` of the job that gathers a split job's pieces."""
    whole = job_resources(result, rule, model, dataset)
    return {"mem_mb": whole["mem_mb"], "runtime": GATHER_RUNTIME}
