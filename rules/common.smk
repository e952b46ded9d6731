# Shared by every file of rules/, in sections: paths; input functions and params; plan and
# resources; targets; labels.
import functools
import json
import re
import sys
from pathlib import Path

from patchlens.analysis.registry import all_analyses
from patchlens.analysis.specs import ATTENTION, CKA, TOKEN_NORMS
from patchlens.config import (
    analysis_outputs,
    analysis_pairs,
    analysis_params,
    evaluation_jobs,
    task_params,
    task_variants,
)
from patchlens.errors import ConfigError, PatchlensError
from patchlens.features.variants import VARIANT_PATTERN, needs_stats
from patchlens.models.resolve import feature_entry, model_label
from patchlens.report.provenance import provenance_datasets, provenance_pairs
from patchlens.report.patch_pca import explorer_settings
from patchlens.plan import (
    GPU_TFLOPS,
    PIECE_PATTERN,
    check_disk,
    gather_resources,
    job_resources,
    max_runtime,
    piece_resources,
    plan as plan_study,
    rule_threads,
    split_jobs,
)

RESULTS = "results"
EXTRACT_ENV = "../envs/extract.yaml"
EVAL_ENV = "../envs/evaluate-gpu.yaml" if config["gpu"] else "../envs/evaluate.yaml"
# keys as the schema allows them (letters, digits, _ - .), matched literally
DATASET_KEYS = "|".join(map(re.escape, config["datasets"]))
MODEL_KEYS = "|".join(map(re.escape, config["models"]))


wildcard_constraints:
    dataset=DATASET_KEYS,
    model=MODEL_KEYS,
    variant=VARIANT_PATTERN,
    piece=PIECE_PATTERN,


# -- paths: where every file of a run lives, and the params helpers
def canonical(obj):
    """Dicts with sorted keys: Snakemake compares params by their text, and the order of keys in
    a YAML file must not decide whether a job reruns."""
    return json.loads(json.dumps(obj, sort_keys=True))


def settings(section, name):
    """Canonical params of a task or an analysis, defaults filled ({} if not configured)."""
    if name not in (config.get(section) or {}):
        return {}
    params = task_params if section == "tasks" else analysis_params
    return canonical(params(config, name))


def manifest(dataset):
    return f"{RESULTS}/data/{dataset}/manifest.csv"


def features(model, dataset):
    return f"{RESULTS}/features/{model}/{dataset}.h5"


def variance(model, dataset):
    return f"{RESULTS}/variance/{model}/{dataset}.h5"


def feature_output(path):
    """A feature file, temp() when `keep_features: false` (deleted once its consumers are done)."""
    return path if config.get("keep_features", True) else temp(path)


# -- input functions and params: what a rule's jobs read (get_...)
def get_evaluator_inputs(task):
    """Input function of a task's rule: features + data set, and the channel statistics when
    one of the task's variants needs them (one job scores every variant); for a job cut into
    pieces (cut_jobs), the pieces' score rows and units, which it gathers."""
    whole = get_piece_inputs(task)

    def inputs(wildcards):
        pieces = cut_jobs().get((task, wildcards.model, wildcards.dataset))
        if not pieces:
            return whole(wildcards)
        files = {
            kind: [
                piece_file(task, kind, wildcards.model, wildcards.dataset, p, v)
                for p in pieces
                for v in task_variants(config, task)
            ]
            for kind in ("piece_scores", "piece_units")
        }
        # their SHA-256 records, which the gathering checks (temporary outputs like them)
        files["checksums"] = [f"{f}.sha256" for paths in files.values() for f in paths]
        return files

    return inputs


def get_piece_inputs(task):
    """Input function of a task's pieces (and of its whole job): features, data set, and the
    channel statistics when a variant of the task needs them."""
    stats = any(needs_stats(v) for v in task_variants(config, task))

    def inputs(wildcards):
        files = {
            "features": features(wildcards.model, wildcards.dataset),
            "manifest": manifest(wildcards.dataset),
        }
        if stats:
            files["variance"] = variance(wildcards.model, wildcards.dataset)
        return files

    return inputs


def get_dataset_entry(wildcards):
    entry = config["datasets"][wildcards.dataset]
    return canonical({"source": entry["source"], "params": entry.get("params", {})})


def get_model_entry(wildcards):
    """The fields of the model entry that change features (no label, family, datasets)."""
    return canonical(feature_entry(config["models"][wildcards.model]))


def get_analysis_features(name):
    """Input function of an analysis with one job per data set; the feature file of every
    model the analysis covers on that data set, keyed by model."""

    def inputs(wildcards):
        return {
            m: features(m, d)
            for m, d in analysis_pairs(config, name)
            if d == wildcards.dataset
        }

    return inputs


# -- plan and resources: the cost model (patchlens.plan) behind threads, mem_mb, runtime
@functools.lru_cache(maxsize=None)
def study_plan():
    """The cost model of this config (patchlens.plan), computed once per workflow run."""
    return plan_study(config, RESULTS)


def planned_resources(rule_name, gpu=False):
    """mem_mb / runtime of a rule's jobs from the plan (patchlens.plan.job_resources); a GPU
    when the config asks for one (``gpu`` is the resource the SLURM profile passes)."""

    def resource(key):
        def get(wildcards):
            return job_resources(
                study_plan(),
                rule_name,
                wildcards.get("model", "all"),
                wildcards.dataset,
                gpu_tflops=GPU_TFLOPS if gpu else None,
            )[key]

        return get

    res = {"mem_mb": resource("mem_mb"), "runtime": resource("runtime")}
    if gpu:
        res["gpu"] = 1
    return res


def extraction_resources(rule_name="extract_features"):
    """Requests a SLURM plugin understands, from the plan unless `extraction.mem_mb` /
    `extraction.runtime` are set; a GPU only when the config asks for one."""
    res = planned_resources(rule_name, config["gpu"])
    for key in ("mem_mb", "runtime"):
        if config["extraction"].get(key) is not None:
            res[key] = config["extraction"][key]
    return res


def evaluator_resources(task):
    """A task job's resources; for a job cut into pieces, those of gathering them."""
    whole = planned_resources(task, config["gpu"])

    def resource(key):
        def get(wildcards):
            if (task, wildcards.model, wildcards.dataset) not in cut_jobs():
                return whole[key](wildcards) if callable(whole[key]) else whole[key]
            if key == "gpu":
                return 0
            return gather_resources(
                split_plan(), task, wildcards.model, wildcards.dataset
            )[key]

        return get

    return {key: resource(key) for key in whole}


def piece_job_resources(task):
    """mem_mb / runtime of a piece from the plan (patchlens.plan.piece_resources)."""

    def resource(key):
        def get(wildcards):
            return piece_resources(
                split_plan(),
                task,
                wildcards.model,
                wildcards.dataset,
                wildcards.piece,
                gpu_tflops=GPU_TFLOPS if config["gpu"] else None,
            )[key]

        return get

    res = {"mem_mb": resource("mem_mb"), "runtime": resource("runtime")}
    if config["gpu"]:
        res["gpu"] = 1
    return res


# -- jobs a cluster accepts: evaluator jobs cut into pieces, small jobs bundled (docs/cluster.md)
MAX_RUNTIME = max_runtime(config)  # cluster.max_runtime, minutes


@functools.lru_cache(maxsize=None)
def split_plan():
    """The plan from the config alone (no prepared manifest): a job's pieces are the same in
    the driver and in every job a cluster starts, whatever manifest appears later."""
    return plan_study(config, None)


@functools.lru_cache(maxsize=None)
def cut_jobs():
    """{(task, model, dataset): [piece, ...]} of the evaluator jobs longer than
    cluster.max_runtime on the config's node kind (patchlens.plan.split_jobs)."""
    return split_jobs(split_plan(), MAX_RUNTIME, GPU_TFLOPS if config["gpu"] else None)


def piece_file(task, kind, model, dataset, piece, variant):
    """A piece's score rows or units (kind piece_scores / piece_units), removed once gathered."""
    return f"{RESULTS}/pieces/{task}/{model}/{dataset}/{piece}/{kind}/{variant}.parquet"


def bundle_group(name, runtime):
    """group: `name` for a job whose runtime (a function of wildcards) is short enough that the
    profile's group-components bundle of such jobs stays within cluster.max_runtime; no group
    (its own sbatch) otherwise."""

    # the profile's settings are known once the DAG is built, not when this file is read
    def group(wildcards):
        bundle = workflow.group_settings.group_components.get(name, 1)
        return name if runtime(wildcards) * max(1, int(bundle)) <= MAX_RUNTIME else None

    return group


def disk_check():
    """Stop before any job when the planned feature bytes exceed the free space under results/
    (patchlens.plan.check_disk; `disk_check: false` or `--config disk_check=False` overrides).
    """
    if config.get("disk_check", True):
        try:
            check_disk(study_plan(), RESULTS, bool(config.get("keep_features", True)))
        except ConfigError as exc:
            print(f"patchlens: {exc}", file=sys.stderr)
            raise SystemExit(1)


# -- targets: the files the config asks for
def score_files():
    return [
        f"{RESULTS}/scores/{t}/{m}/{d}/{v}.csv"
        for t, m, d, v in evaluation_jobs(config)
    ]


def units_files():
    return [
        f"{RESULTS}/units/{t}/{m}/{d}/{v}.parquet"
        for t, m, d, v in evaluation_jobs(config)
    ]


def variance_files():
    pairs = sorted({(m, d) for _, m, d, _ in evaluation_jobs(config)})
    return [variance(m, d) for m, d in pairs]


def analysis_files(name):
    """The job outputs of analysis `name` (patchlens.analysis registry); [] when not configured."""
    if name not in config["analyses"]:
        return []
    return analysis_outputs(config, name, RESULTS)


def table_files():
    """Every table the figures are drawn from (those the config asks for)."""
    tables = [
        f"{RESULTS}/tables/scores.parquet",
        f"{RESULTS}/tables/models.csv",
        f"{RESULTS}/tables/best_layer.csv",
        f"{RESULTS}/tables/variance.parquet",
    ]
    for spec in all_analyses():
        if analysis_files(spec.name):
            tables += [f"{RESULTS}/tables/{t.file}" for t in spec.tables]
    if evaluation_jobs(
        config
    ):  # paired comparisons over the units (rules/statistics.smk)
        tables.append(f"{RESULTS}/tables/paired.csv")
    return tables


# -- labels: what the report shows beside the numbers
def model_labels():
    return canonical(
        {
            m: {
                "family": model_label(m, e)[1],
                "label": model_label(m, e)[0],
                "timm": e.get("timm", e.get("baseline")),
                "weights": e.get("weights"),
            }
            for m, e in config["models"].items()
        }
    )


def figure_captions():
    """Figure name -> caption (report/captions/{name}.rst), shown by `snakemake --report`."""
    captions = Path(workflow.basedir) / "report" / "captions"
    return {p.stem: p.read_text().strip() for p in sorted(captions.glob("*.rst"))}


# -- patch views: the explorer page and the PCA figure (report.explorer)
try:  # report.explorer: the patch views (explorer page, PCA figure); None when not configured
    EXPLORER = explorer_settings(config)
except PatchlensError as exc:  # the config alone shows it: one line, before any job
    sys.exit(f"patchlens: {exc}")


def explorer_pairs():
    """[[data set, model], ...] of the explorer page, data sets in config order."""
    if not EXPLORER:
        return []
    return [[d, m] for d in EXPLORER["datasets"] for m in EXPLORER["models"][d]]


def explorer_pages():
    return [f"{RESULTS}/report/explorer.html"] if EXPLORER else []


def patch_pca_tables():
    return [f"{RESULTS}/tables/patch_pca.parquet"] if EXPLORER else []
