# Resampling statistics and high-norm tokens: paired model comparisons over the evaluators'
# per-unit records (docs/protocols.md#resampling-units) and token-norm statistics from the
# stored features.


rule paired:
    input:
        scores=f"{RESULTS}/tables/scores.parquet",
        units=units_files(),
    output:
        f"{RESULTS}/tables/paired.csv",
    log:
        f"{RESULTS}/logs/paired.log",
    benchmark:
        f"{RESULTS}/benchmarks/paired.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        bootstrap=canonical(config["statistics"]),
    script:
        "../scripts/paired.py"


rule token_norms:
    input:
        features=lambda wc: features(wc.model, wc.dataset),
        manifest=lambda wc: manifest(wc.dataset),
    output:
        f"{RESULTS}/token_norms/{{model}}/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/token_norms/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/token_norms/{{model}}/{{dataset}}.tsv"
    conda:
        EVAL_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=settings("analyses", TOKEN_NORMS.name),
    script:
        "../scripts/token_norms.py"


rule token_norms_table:
    input:
        analysis_files(TOKEN_NORMS.name),
    output:
        f"{RESULTS}/tables/token_norms.parquet",
    log:
        f"{RESULTS}/logs/token_norms_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/token_norms_table.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/concat_tables.py"
