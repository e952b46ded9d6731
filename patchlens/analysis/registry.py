"""The analysis registry: every representation analysis declares once what the config, the start-up
check, the workflow's targets, the provenance and the plan need to know about it -- as the task
registry (:mod:`patchlens.tasks.registry`) does for the evaluation tasks.

An analysis is declared with one call (the built-in ones: :mod:`patchlens.analysis.specs`)::

    register_analysis(AnalysisSpec(
        name="norms", title="Token norms", defaults=DEFAULT_PARAMS, sampling={"split": None},
        check_params=check_settings, outputs="norms/{model}/{dataset}.parquet",
        tables=("norms.parquet",), reads="features", figures=("norms",)))

Importing :mod:`patchlens.analysis` imports every module of the package, so every module that
registers an analysis is in the registry before anyone asks for it; this module imports none of
them. ``order`` (ascending, then the name) is the order of the analyses wherever they are listed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath

from patchlens.registry_checks import NAME, by_order, check_identity, check_order, names_by_order

READS = ("features", "images")


@dataclass(frozen=True)
class Table:
    """One summary table of an analysis: its ``name`` (the report's key for it), its ``file``
    under ``results/tables`` and its ``columns``. ``columns=None``: an optional table, read only
    when present and as written (:mod:`patchlens.report.statistics`); otherwise the report
    checks the columns and reads an absent table as an empty one (:mod:`patchlens.report.tables`)."""
    name: str
    file: str
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    """What one analysis declares.

    ``name``: its key under ``analyses:`` in the config. ``title``: its heading in the report.
    ``defaults``: the protocol parameters the analysis module defines (its ``DEFAULT_PARAMS``).
    ``sampling``: the workflow-level parameters beside them (which images: ``split``,
    ``max_images``, ...), defaults filled the same way; together they are
    ``analyses.<name>.params`` (:func:`patchlens.config.analysis_params`).
    ``check_params(settings) -> dict``: those settings (every default filled) validated;
    ConfigError naming the key otherwise. Run when the workflow starts
    (:mod:`patchlens.startup`) and by the jobs.
    ``outputs``: one job's output under ``results/``, with ``{dataset}`` and, when there is one
    job per (model, data set), ``{model}`` (:func:`patchlens.config.analysis_outputs`).
    ``tables``: the summary tables under ``results/tables`` made from those outputs, each a
    :class:`Table` (a plain file name is read as ``Table(<its stem>, <file>)``); the report reads
    them by name (:data:`patchlens.report.tables.TABLE_FILES`).
    ``reads``: ``"features"`` (the extracted feature files) or ``"images"`` (a forward pass of
    its own over the data set's images).
    ``timm_only``: the default model list is the timm models only (a forward pass needs a
    network), else every model.
    ``check_model(settings, key, facts)``: optional check of the settings against one analysed
    model's facts (:func:`patchlens.models.resolve.resolve_model`, e.g. ``n_blocks``).
    ``figures``: names of the report figures (:data:`patchlens.report.figures.FIGURES`) shown in
    the analysis's report section, in order (names without a figure are ignored).
    ``flop``: optional cost model of one job for the resource plan (:mod:`patchlens.plan`),
    ``flop(params, split_counts, models) -> dict``: ``models`` a list of the job's models (one
    per job when ``outputs`` has ``{model}``, else every model of the data set), each a dict of
    its facts (:func:`patchlens.plan.facts.model_facts`) with ``grid`` (the patch grid) and
    ``feature_bytes`` (its feature file on that data set); returns ``flop`` and any of
    ``written``, ``read`` (bytes), ``mem`` and the plan's named costs (e.g. ``mparams``).
    Without one the analysis adds no job row (a negligible cost).
    ``rule``: the workflow rule of its jobs (default: ``name``). ``threads``: a fixed thread
    count of those jobs, else the rule's jobs take ``extraction.threads`` when ``reads`` is
    ``"images"`` (they run a model) and ``evaluation.threads`` otherwise.
    ``order``: its rank wherever analyses are listed (ascending)."""
    name: str
    title: str
    defaults: Mapping
    sampling: Mapping
    check_params: Callable[[dict], dict]
    outputs: str
    tables: tuple[Table | str, ...]
    reads: str = "features"
    timm_only: bool = False
    check_model: Callable | None = None
    figures: tuple[str, ...] = ()
    flop: Callable | None = None
    rule: str = ""
    threads: int | None = None
    order: int = 100

    @property
    def per_model(self) -> bool:
        """One job per (model, data set) (else one per data set over all its models)."""
        return "{model}" in self.outputs

    @property
    def job_rule(self) -> str:
        """The workflow rule of its jobs."""
        return self.rule or self.name


_REGISTRY: dict[str, AnalysisSpec] = {}


def register_analysis(spec: AnalysisSpec) -> AnalysisSpec:
    """Add ``spec`` to the registry and return it. ValueError (a programming error, raised at
    import) for a second analysis of the same name or a malformed declaration."""
    where = f"analysis {spec.name!r}"
    check_identity(spec, _REGISTRY, where, "analysis")
    if not (isinstance(spec.title, str) and spec.title):
        raise ValueError(f"{where}: title must be a non-empty string")
    if not (isinstance(spec.defaults, Mapping) and isinstance(spec.sampling, Mapping)):
        raise ValueError(f"{where}: defaults and sampling must be mappings")
    if set(spec.defaults) & set(spec.sampling):
        raise ValueError(f"{where}: defaults and sampling share keys "
                         f"{sorted(set(spec.defaults) & set(spec.sampling))}")
    if not (isinstance(spec.outputs, str) and "{dataset}" in spec.outputs):
        raise ValueError(f"{where}: outputs must be a path with {{dataset}}")
    if not (isinstance(spec.tables, tuple) and isinstance(spec.figures, tuple)) or \
            spec.reads not in READS or not all(isinstance(t, (Table, str)) for t in spec.tables):
        raise ValueError(f"{where}: tables and figures must be tuples, reads one of {READS}")
    if not callable(spec.check_params) or any(
            f is not None and not callable(f) for f in (spec.check_model, spec.flop)):
        raise ValueError(f"{where}: check_params (and check_model, flop if given) must be "
                         "callables")
    check_order(spec, where)
    if spec.threads is not None and (not isinstance(spec.threads, int) or spec.threads < 1):
        raise ValueError(f"{where}: threads must be a positive integer or None")
    if spec.rule and not NAME.match(spec.rule):
        raise ValueError(f"{where}: rule must be lower_case_with_underscores")
    tables = tuple(t if isinstance(t, Table) else Table(PurePath(t).name.split(".")[0], t)
                   for t in spec.tables)
    spec = replace(spec, tables=tables)
    _REGISTRY[spec.name] = spec
    return spec


def all_analyses() -> tuple[AnalysisSpec, ...]:
    """Every registered :class:`AnalysisSpec`, by ``order`` then name."""
    return by_order(_REGISTRY)


def analysis_names() -> tuple[str, ...]:
    """Every registered analysis's name, by ``order`` then name."""
    return names_by_order(_REGISTRY)


def find_analysis(name: str) -> AnalysisSpec | None:
    """The :class:`AnalysisSpec` of ``name``, or None."""
    return _REGISTRY.get(name) if isinstance(name, str) else None
