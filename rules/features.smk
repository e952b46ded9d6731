# Features: one forward pass per batch yields every selected layer, written to one HDF5 file.


rule extract_features:
    input:
        manifest=lambda wc: manifest(wc.dataset),
    output:
        feature_output(f"{RESULTS}/features/{{model}}/{{dataset}}.h5"),
    log:
        f"{RESULTS}/logs/extract_features/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_features/{{model}}/{{dataset}}.tsv"
    conda:
        EXTRACT_ENV
    threads: rule_threads(config, "extract_features")
    resources:
        **extraction_resources(),
    params:
        model=get_model_entry,
        img_size=lambda wc: config["datasets"][wc.dataset]["img_size"],
        # weights_dir and extraction.batch_size are read from the config by the script: where
        # weights are cached and how many images go per batch do not change the features
    script:
        "../scripts/extract_features.py"
