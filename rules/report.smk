# Summary tables -> figures -> report. Figures are drawn from tables only, so
# `snakemake --cores 1 --forcerun figures report` redraws them without rerunning any evaluator.


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
        table_files() + patch_pca_tables(),
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
        explorer=explorer_pages(),
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


if EXPLORER:

    rule patch_pca:
        input:
            features=[
                features(m, EXPLORER["datasets"][0])
                for m in EXPLORER["models"][EXPLORER["datasets"][0]]
            ],
            manifest=manifest(EXPLORER["datasets"][0]),
            best_layer=(
                [f"{RESULTS}/tables/best_layer.csv"] if evaluation_jobs(config) else []
            ),
        output:
            f"{RESULTS}/tables/patch_pca.parquet",
        log:
            f"{RESULTS}/logs/patch_pca.log",
        benchmark:
            f"{RESULTS}/benchmarks/patch_pca.tsv"
        conda:
            "../envs/report.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            dataset=EXPLORER["datasets"][0],
            models=EXPLORER["models"][EXPLORER["datasets"][0]],
            settings=canonical({k: EXPLORER[k] for k in ("images", "figure_images")}),
        script:
            "../scripts/patch_pca.py"

    rule explorer:
        input:
            features=[features(m, d) for d, m in explorer_pairs()],
            variances=(
                [variance(m, d) for d, m in explorer_pairs()]
                if any(needs_stats(v) for v in EXPLORER["variants"])
                else []
            ),
            manifests=[manifest(d) for d in EXPLORER["datasets"]],
        output:
            page=f"{RESULTS}/report/explorer.html",
            stats=f"{RESULTS}/report/explorer.json",
        log:
            f"{RESULTS}/logs/explorer.log",
        benchmark:
            f"{RESULTS}/benchmarks/explorer.tsv"
        conda:
            "../envs/report.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=20,
        params:
            pairs=explorer_pairs(),
            settings=canonical(
                {
                    k: v
                    for k, v in EXPLORER.items()
                    if k not in ("figure_images", "models")
                }
            ),
            labels=canonical(
                {
                    m: model_label(m, config["models"][m])[0]
                    for _, m in explorer_pairs()
                }
            ),
        script:
            "../scripts/explorer.py"
