# Target lists and input functions shared by the rule files.
import json
from pathlib import Path

from patchlens.config import (analysis_models, analysis_params, evaluation_jobs, model_datasets,
                              task_params, task_variants)
from patchlens.features.variants import needs_stats

RESULTS = "results"
EXTRACT_ENV = "../envs/extract.yaml"
EVAL_ENV = "../envs/evaluate-gpu.yaml" if config["gpu"] else "../envs/evaluate.yaml"
DATASET_KEYS = "|".join(config["datasets"])
MODEL_KEYS = "|".join(config["models"])


wildcard_constraints:
    dataset=DATASET_KEYS,
    model=MODEL_KEYS,
    variant=r"raw|zscore|drop\d+",


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


def score_files():
    return [f"{RESULTS}/scores/{t}/{m}/{d}/{v}.csv" for t, m, d, v in evaluation_jobs(config)]


def evaluator_inputs(wildcards):
    """Features + data set, and the channel statistics when the variant needs them."""
    inputs = {"features": features(wildcards.model, wildcards.dataset),
              "manifest": manifest(wildcards.dataset)}
    if needs_stats(wildcards.variant):
        inputs["variance"] = variance(wildcards.model, wildcards.dataset)
    return inputs


def dataset_entry(wildcards):
    entry = config["datasets"][wildcards.dataset]
    return canonical({"source": entry["source"], "params": entry.get("params", {})})


def model_entry(wildcards):
    return canonical(config["models"][wildcards.model])


def attention_files():
    if "attention" not in config["analyses"]:
        return []
    return [f"{RESULTS}/attention/{m}/{d}.h5"
            for d in config["analyses"]["attention"]["datasets"]
            for m in analysis_models(config, "attention") if d in model_datasets(config, m)]


def cka_feature_files(wildcards):
    models = [m for m in analysis_models(config, "cka", timm_only=False)
              if wildcards.dataset in model_datasets(config, m)]
    return {m: features(m, wildcards.dataset) for m in models}


def cka_files():
    if "cka" not in config["analyses"]:
        return []
    return [f"{RESULTS}/cka/{d}.parquet" for d in config["analyses"]["cka"]["datasets"]]


def extraction_resources():
    """Requests a SLURM plugin understands; a GPU only when the config asks for one."""
    res = {"mem_mb": config["extraction"]["mem_mb"], "runtime": config["extraction"]["runtime"]}
    if config["gpu"]:
        res["gpu"] = 1
    return res


def variance_files():
    pairs = sorted({(m, d) for _, m, d, _ in evaluation_jobs(config)})
    return [variance(m, d) for m, d in pairs]


def table_files():
    """Every table the figures are drawn from (those the config asks for)."""
    tables = [f"{RESULTS}/tables/scores.parquet", f"{RESULTS}/tables/models.csv",
              f"{RESULTS}/tables/best_layer.csv",
              f"{RESULTS}/tables/variance.parquet"]
    if attention_files():
        tables += [f"{RESULTS}/tables/attention.parquet", f"{RESULTS}/tables/offset_heads.csv",
                   f"{RESULTS}/tables/offset_maps.parquet"]
    if cka_files():
        tables.append(f"{RESULTS}/tables/cka.parquet")
    if units_wired():  # rules/statistics.smk
        tables.append(f"{RESULTS}/tables/paired.csv")
    if token_norm_files():
        tables.append(f"{RESULTS}/tables/token_norms.parquet")
    return tables


def model_labels():
    return canonical({m: {"family": e.get("family", "other"), "label": e.get("label", m),
                          "timm": e.get("timm", e.get("baseline")), "weights": e.get("weights")}
                      for m, e in config["models"].items()})


def figure_captions():
    """Figure name -> caption (report/captions/{name}.rst), shown by `snakemake --report`."""
    captions = Path(workflow.basedir) / "report" / "captions"
    return {p.stem: p.read_text().strip() for p in sorted(captions.glob("*.rst"))}
