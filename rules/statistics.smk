# Resampling statistics and high-norm tokens: paired model comparisons over the evaluators'
# per-unit records (docs/protocols.md#resampling-units) and token-norm statistics from the stored features.


def units_files():
    return [f"{RESULTS}/units/{t}/{m}/{d}/{v}.parquet" for t, m, d, v in evaluation_jobs(config)]


def token_norm_files():
    if "token_norms" not in config["analyses"]:
        return []
    return [f"{RESULTS}/token_norms/{m}/{d}.parquet"
            for d in config["analyses"]["token_norms"]["datasets"]
            for m in analysis_models(config, "token_norms", timm_only=False)
            if d in model_datasets(config, m)]


rule paired:
    input:
        scores=f"{RESULTS}/tables/scores.parquet",
        units=units_files(),
    output:
        f"{RESULTS}/tables/paired.csv",
    params:
        bootstrap=canonical(config["statistics"]),
    log:
        f"{RESULTS}/logs/paired.log",
    benchmark:
        f"{RESULTS}/benchmarks/paired.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/paired.py"


rule token_norms:
    input:
        features=lambda wc: features(wc.model, wc.dataset),
        manifest=lambda wc: manifest(wc.dataset),
    output:
        f"{RESULTS}/token_norms/{{model}}/{{dataset}}.parquet",
    params:
        settings=settings("analyses", "token_norms"),
    log:
        f"{RESULTS}/logs/token_norms/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/token_norms/{{model}}/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        EVAL_ENV
    script:
        "../scripts/token_norms.py"


rule token_norms_table:
    input:
        token_norm_files(),
    output:
        f"{RESULTS}/tables/token_norms.parquet",
    log:
        f"{RESULTS}/logs/token_norms_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/token_norms_table.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/concat_tables.py"
