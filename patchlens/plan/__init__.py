"""What a study costs before it runs: jobs, FLOPs, bytes and hours of every stage (rule).

The one home of the cost model (``patchlens plan CONFIG``; the rule resources of
``rules/common.smk`` and the disk check before extraction use it too). A small package:

* :mod:`.rows`: the study's job rows. A task's cost is declared by the task itself
  (``TaskSpec.flop`` in its module, one layer with every variant); the rows multiply it by the
  layers each evaluator job reads (every layer is read once, whole) and add data preparation,
  extraction and the channel statistics; :mod:`.analyses` the analyses' rows;
* :mod:`.facts`: model facts from :func:`patchlens.models.resolve.resolve_model` (width, depth,
  patch size, MLP width, prefix tokens, final norm), the ViT's forward FLOPs, feature bytes;
* :mod:`.hours`: seconds per job at a machine's rates, stage hours, the rule resources, the
  disk check; :mod:`.splits`: evaluator jobs cut into pieces that fit a cluster's runtime limit
  (the workflow's ``<task>_piece`` jobs); :mod:`.probe`:
  this machine's rates; :mod:`.report`: the text table.

Counting (multiply-adds count as 2 FLOPs; float16 tokens as 2 bytes): images per split from a
prepared ``manifest.csv`` under ``results/data/<dataset>/`` when present, else the recipes'
official split sizes cut by the data set's limits (:mod:`patchlens.data.sizes`); a feature file =
images x layers x patches x channels x 2 bytes (+ class tokens), layers = the blocks (``layers:
all``; one more, the output after the final norm, when the model has one) or the model's
``layers:`` list; extraction = images x the ViT's forward FLOPs. The FLOP counts are the dominant
matmuls only; ``benchmarks/rehearsal.py`` measures how far the real jobs are from them.
"""
from patchlens.data.sizes import split_counts
from patchlens.plan.facts import feature_bytes, grid_of, model_facts, vit_flop, vit_mparams
from patchlens.plan.hours import (BUILD_S_PER_MPARAM, CORE_GFLOPS, CORE_RATES, CORE_TIMES,
                                  DEFAULT_RATES,
                                  DISK_GBPS, GPU, GPU_FP16_TFLOPS, GPU_TFLOPS,
                                  LBFGS_GFLOPS, PROBED, STARTUP_S,
                                  UPSAMPLE_NS, add_hours, check_disk, gpu_rates,
                                  job_resources, job_seconds)
from patchlens.plan.probe import probe
from patchlens.plan.report import drivers, format_plan, human_bytes
from patchlens.plan.rows import ROW_COSTS, plan, rule_threads, task_cost, task_flop
from patchlens.plan.splits import (PIECE_PATTERN, gather_resources, job_pieces, job_splits,
                                   max_runtime, parse_piece, piece_resources, split_jobs,
                                   split_summary)

__all__ = ["BUILD_S_PER_MPARAM", "CORE_GFLOPS", "CORE_RATES", "CORE_TIMES", "DEFAULT_RATES", "DISK_GBPS",
           "GPU", "GPU_FP16_TFLOPS", "GPU_TFLOPS", "LBFGS_GFLOPS", "PIECE_PATTERN", "PROBED",
           "ROW_COSTS", "STARTUP_S", "UPSAMPLE_NS", "add_hours", "check_disk", "drivers",
           "feature_bytes", "format_plan", "gather_resources", "gpu_rates", "grid_of",
           "human_bytes", "job_pieces", "job_resources", "job_splits", "job_seconds", "max_runtime",
           "model_facts", "parse_piece", "piece_resources", "plan", "probe", "rule_threads",
           "split_counts", "split_jobs", "split_summary", "task_cost", "task_flop", "vit_flop",
           "vit_mparams"]
