# Summary tables -> figures -> report. Figures are drawn from tables only, so
# `snakemake --cores 1 --forcerun figures report` redraws them without rerunning any evaluator.
from patchlens.report.provenance import provenance_datasets, provenance_pairs


rule collect_scores:
    input:
        score_files(),
    output:
        scores=f"{RESULTS}/tables/scores.parquet",
        models=f"{RESULTS}/tables/models.csv",
    log:
        f"{RESULTS}/logs/collect_scores.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect_scores.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        models=model_labels(),
    script:
        "../scripts/collect_scores.py"


rule variance_table:
    input:
        variance_files(),
    output:
        f"{RESULTS}/tables/variance.parquet",
    log:
        f"{RESULTS}/logs/variance_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/variance_table.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/variance_table.py"


rule figures:
    input:
        table_files(),
    output:
        report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figure.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        captions=figure_captions(),
    script:
        "../scripts/figures.py"


rule report:
    input:
        figures=f"{RESULTS}/figures",
        tables=table_files(),
        features=[features(m, d) for m, d in provenance_pairs(config)],
        manifests=[manifest(d) for d in provenance_datasets(config)],
    output:
        f"{RESULTS}/report/index.html",
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=canonical(config),
    script:
        "../scripts/report.py"
