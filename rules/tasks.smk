# Task evaluators: every layer of every model, for each feature variant -> one tidy CSV.
# Each task is its own rule, so a changed task parameter reruns that task's jobs only.


rule fewshot_seg:
    input:
        unpack(evaluator_inputs),
    output:
        f"{RESULTS}/scores/fewshot_seg/{{model}}/{{dataset}}/{{variant}}.csv",
    params:
        task="fewshot_seg",
        settings=lambda wc: settings("tasks", "fewshot_seg"),
    log:
        f"{RESULTS}/logs/fewshot_seg/{{model}}/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fewshot_seg/{{model}}/{{dataset}}/{{variant}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    group:
        "evaluate"
    conda:
        EVAL_ENV
    script:
        "../scripts/evaluate.py"


use rule fewshot_seg as instance_id with:
    output:
        f"{RESULTS}/scores/instance_id/{{model}}/{{dataset}}/{{variant}}.csv",
    params:
        task="instance_id",
        settings=lambda wc: settings("tasks", "instance_id"),
    log:
        f"{RESULTS}/logs/instance_id/{{model}}/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/instance_id/{{model}}/{{dataset}}/{{variant}}.tsv"


use rule fewshot_seg as retrieval with:
    output:
        f"{RESULTS}/scores/retrieval/{{model}}/{{dataset}}/{{variant}}.csv",
    params:
        task="retrieval",
        settings=lambda wc: settings("tasks", "retrieval"),
    log:
        f"{RESULTS}/logs/retrieval/{{model}}/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrieval/{{model}}/{{dataset}}/{{variant}}.tsv"


use rule fewshot_seg as tracking with:
    output:
        f"{RESULTS}/scores/tracking/{{model}}/{{dataset}}/{{variant}}.csv",
    params:
        task="tracking",
        settings=lambda wc: settings("tasks", "tracking"),
    log:
        f"{RESULTS}/logs/tracking/{{model}}/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tracking/{{model}}/{{dataset}}/{{variant}}.tsv"


use rule fewshot_seg as keypoints with:
    output:
        f"{RESULTS}/scores/keypoints/{{model}}/{{dataset}}/{{variant}}.csv",
    params:
        task="keypoints",
        settings=lambda wc: settings("tasks", "keypoints"),
    log:
        f"{RESULTS}/logs/keypoints/{{model}}/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/keypoints/{{model}}/{{dataset}}/{{variant}}.tsv"


use rule fewshot_seg as lowshot_cls with:
    output:
        f"{RESULTS}/scores/lowshot_cls/{{model}}/{{dataset}}/{{variant}}.csv",
    params:
        task="lowshot_cls",
        settings=lambda wc: settings("tasks", "lowshot_cls"),
    log:
        f"{RESULTS}/logs/lowshot_cls/{{model}}/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lowshot_cls/{{model}}/{{dataset}}/{{variant}}.tsv"
