# Representation analyses: attention statistics and offset local heads (one extra forward pass,
# never storing full maps), CKA between layers and models, best layer per task.


rule attention_stats:
    input:
        manifest=lambda wc: manifest(wc.dataset),
    output:
        f"{RESULTS}/attention/{{model}}/{{dataset}}.h5",
    log:
        f"{RESULTS}/logs/attention_stats/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attention_stats/{{model}}/{{dataset}}.tsv"
    conda:
        EXTRACT_ENV
    threads: rule_threads(config, ATTENTION.job_rule)
    resources:
        **extraction_resources("attention_stats"),
    params:
        model=get_model_entry,
        img_size=lambda wc: config["datasets"][wc.dataset]["img_size"],
        # the offset-head thresholds reach attention_tables only
        settings={
            k: v
            for k, v in settings("analyses", ATTENTION.name).items()
            if k != "offset_heads"
        },
        # weights_dir and extraction.batch_size are read from the config by the script: where
        # weights are cached and how many images go per batch do not change the statistics
    script:
        "../scripts/attention_stats.py"


rule attention_tables:
    input:
        analysis_files(ATTENTION.name),
    output:
        attention=f"{RESULTS}/tables/attention.parquet",
        offset_heads=f"{RESULTS}/tables/offset_heads.csv",
        offset_maps=f"{RESULTS}/tables/offset_maps.parquet",
    log:
        f"{RESULTS}/logs/attention_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/attention_tables.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        settings=settings("analyses", ATTENTION.name),
    script:
        "../scripts/attention_tables.py"


rule cka:
    input:
        unpack(get_analysis_features(CKA.name)),
        manifest=lambda wc: manifest(wc.dataset),
    output:
        f"{RESULTS}/cka/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/cka/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cka/{{dataset}}.tsv"
    conda:
        EVAL_ENV
    threads: rule_threads(config, CKA.job_rule)
    resources:
        **({"gpu": 1} if config["gpu"] else {}),
        mem_mb=8000,
        runtime=120,
    params:
        settings=settings("analyses", CKA.name),
    script:
        "../scripts/cka.py"


rule cka_table:
    input:
        analysis_files(CKA.name),
    output:
        f"{RESULTS}/tables/cka.parquet",
    log:
        f"{RESULTS}/logs/cka_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/cka_table.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/concat_tables.py"


rule best_layer:
    input:
        f"{RESULTS}/tables/scores.parquet",
    output:
        f"{RESULTS}/tables/best_layer.csv",
    log:
        f"{RESULTS}/logs/best_layer.log",
    benchmark:
        f"{RESULTS}/benchmarks/best_layer.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/best_layer.py"
