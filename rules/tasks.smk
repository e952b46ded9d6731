# Task evaluators: one job per (task, model, data set) scores every layer for every variant of
# the task, reading each layer of the feature file once, and writes one tidy CSV per variant.
# Each task is its own rule (generated below), so a changed task parameter reruns that task's
# jobs only. Per variant: the scores (with bootstrap intervals) and the per-unit records that the
# intervals and the paired comparisons resample (docs/protocols.md#resampling-units).
# A job the plan says runs longer than cluster.max_runtime is cut into pieces (<task>_piece: a
# group of layers, or of one layer's seeds); the task's rule then gathers them into the same
# outputs, the intervals computed over every piece's units (docs/cluster.md).


def variant_paths(task, kind, ext):
    """results/<kind>/<task>/{model}/{dataset}/<variant>.<ext> for every variant of the task."""
    return expand(
        f"{RESULTS}/{kind}/{task}/{{{{model}}}}/{{{{dataset}}}}/{{variant}}.{ext}",
        variant=task_variants(config, task),
    )


def piece_paths(task, kind):
    """A piece's score rows or units (kind piece_scores / piece_units), one per variant."""
    return [
        piece_file(task, kind, "{model}", "{dataset}", "{piece}", v)
        for v in task_variants(config, task)
    ]


def piece_checksums(task):
    """The SHA-256 records written beside a piece's tables (removed with them once gathered)."""
    return [
        f"{p}.sha256"
        for kind in ("piece_scores", "piece_units")
        for p in piece_paths(task, kind)
    ]


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
            bundle_group("evaluate", evaluator_resources(_task)["runtime"])
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

    rule:
        name:
            f"{_task}_piece"
        input:
            unpack(get_piece_inputs(_task)),
        output:
            piece_scores=temp(piece_paths(_task, "piece_scores")),
            piece_units=temp(piece_paths(_task, "piece_units")),
            checksums=temp(piece_checksums(_task)),
        log:
            f"{RESULTS}/logs/{_task}/{{model}}/{{dataset}}/{{piece}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{_task}/{{model}}/{{dataset}}/{{piece}}.tsv"
        conda:
            EVAL_ENV
        threads: rule_threads(config, _task)
        resources:
            **piece_job_resources(_task),
        params:
            task=_task,
            variants=task_variants(config, _task),
            settings=settings("tasks", _task),
        script:
            "../scripts/evaluate_piece.py"
