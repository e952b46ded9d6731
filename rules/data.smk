# Data sets: the built-in procedural `scenes`, or an official recipe (download + convert).


rule prepare_dataset:
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../envs/data.yaml"
    threads: rule_threads(config, "prepare_dataset")
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        entry=get_dataset_entry,
        # data_dir (the download cache) is read from the config by the script: it does not
        # change the prepared data set
    script:
        "../scripts/prepare_dataset.py"
