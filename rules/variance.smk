# Channel statistics of the support split: the basis of the drop{m} and zscore variants, pooled
# from the per-split moments the extractor stored in the feature file (stats_*; no token is read).

VARIANCE_RUNTIME = 30  # minutes


rule channel_variance:
    input:
        features=f"{RESULTS}/features/{{model}}/{{dataset}}.h5",
        manifest=lambda wc: manifest(wc.dataset),
    output:
        f"{RESULTS}/variance/{{model}}/{{dataset}}.h5",
    log:
        f"{RESULTS}/logs/channel_variance/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/channel_variance/{{model}}/{{dataset}}.tsv"
    group:
        bundle_group("variance", lambda wildcards: VARIANCE_RUNTIME)
    conda:
        EVAL_ENV
    threads: rule_threads(config, "channel_variance")
    resources:
        mem_mb=2000,
        runtime=VARIANCE_RUNTIME,
    params:
        split=config["variance"]["split"],
    script:
        "../scripts/channel_variance.py"
