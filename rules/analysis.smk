# Representation analyses: attention statistics and offset local heads (one extra forward pass,
# never storing full maps), CKA between layers and models, best layer per task.


rule attention_stats:
    input:
        manifest=lambda wc: manifest(wc.dataset),
    output:
        f"{RESULTS}/attention/{{model}}/{{dataset}}.h5",
    params:
        model=model_entry,
        img_size=lambda wc: config["datasets"][wc.dataset]["img_size"],
        settings=attention_forward_settings(),
        # weights_dir and extraction.batch_size are read from the config by the script: where
        # weights are cached and how many images go per batch do not change the statistics
    log:
        f"{RESULTS}/logs/attention_stats/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attention_stats/{{model}}/{{dataset}}.tsv"
    threads: config["extraction"]["threads"]
    resources:
        **extraction_resources("attention_stats"),
    conda:
        EXTRACT_ENV
    script:
        "../scripts/attention_stats.py"


rule attention_tables:
    input:
        attention_files(),
    output:
        attention=f"{RESULTS}/tables/attention.parquet",
        offset_heads=f"{RESULTS}/tables/offset_heads.csv",
        offset_maps=f"{RESULTS}/tables/offset_maps.parquet",
    params:
        settings=settings("analyses", "attention"),
    log:
        f"{RESULTS}/logs/attention_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/attention_tables.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/attention_tables.py"


rule cka:
    input:
        unpack(cka_feature_files),
        manifest=lambda wc: manifest(wc.dataset),
    output:
        f"{RESULTS}/cka/{{dataset}}.parquet",
    params:
        settings=settings("analyses", "cka"),
    log:
        f"{RESULTS}/logs/cka/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cka/{{dataset}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        **({"gpu": 1} if config["gpu"] else {}),
    conda:
        EVAL_ENV
    script:
        "../scripts/cka.py"


rule cka_table:
    input:
        cka_files(),
    output:
        f"{RESULTS}/tables/cka.parquet",
    log:
        f"{RESULTS}/logs/cka_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/cka_table.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/report.yaml"
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
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/best_layer.py"
