# Task evaluators: one job per (task, model, data set) scores every layer for every variant of
# the task, reading each layer of the feature file once, and writes one tidy CSV per variant.
# Each task is its own rule (generated below), so a changed task parameter reruns that task's
# jobs only. Per variant: the scores (with bootstrap intervals) and the per-unit records that the
# intervals and the paired comparisons resample (docs/protocols.md#resampling-units).


def variant_paths(task, kind, ext):
    """results/<kind>/<task>/{model}/{dataset}/<variant>.<ext> for every variant of the task."""
    return expand(
        f"{RESULTS}/{kind}/{task}/{{{{model}}}}/{{{{dataset}}}}/{{variant}}.{ext}",
        variant=task_variants(config, task),
    )


for _task in config["tasks"]:

    rule:
        name:
            _task
        input:
            unpack(get_evaluator_inputs(_task)),
        output:
            scores=variant_paths(_task, "scores", "csv"),
            units=variant_paths(_task, "units", "parquet"),
        log:
            f"{RESULTS}/logs/{_task}/{{model}}/{{dataset}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{_task}/{{model}}/{{dataset}}.tsv"
        group:
            "evaluate"
        conda:
            EVAL_ENV
        threads: rule_threads(config, _task)
        resources:
            **evaluator_resources(_task),
        params:
            task=_task,
            variants=task_variants(config, _task),
            settings=settings("tasks", _task),
            bootstrap=canonical(config["statistics"]),
        script:
            "../scripts/evaluate.py"
