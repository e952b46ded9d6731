"""The task registry: every evaluation task declares, in its own module, what the workflow, the
config checks and the report need to know about it (in the spirit of timm's ``register_model``).

A task module ends with one call::

    SPEC = register_task(TaskSpec(
        name=TASK, title="Few-shot segmentation", color="#0072b2", headline="miou_knn",
        defaults=DEFAULT_PARAMS, requires=REQUIRES, check_params=check_params, run=run,
        order=10, figures=("fewshot_seg",)))

and :mod:`patchlens.tasks` imports every module of the package, so that the task exists for the config
(:data:`patchlens.config.TASKS`, unknown names rejected before any job runs), the workflow (one
rule per configured task, ``rules/tasks.smk``), the evaluator (:mod:`patchlens.evaluate`), the
tables (headline metric, task order: :mod:`patchlens.report.tables`), the figure style (colour,
title: :mod:`patchlens.report.style`) and the report (one section per task:
:mod:`patchlens.report.html`). The protocols are documented in ``docs/protocols.md``.

The contract of ``run`` and ``check_params``:

- ``check_params(params) -> dict``: ``tasks.<name>.params`` with ``defaults`` filled;
  :class:`~patchlens.errors.ConfigError` naming the key otherwise. Run when the workflow starts
  (:func:`patchlens.startup.check_values`) and by the jobs.
- ``run(store, dataset, transform, params, layers=None, units=None) -> DataFrame``: one row per
  (layer, seed, metric, ...) with columns ``layer, seed, metric, value, n_eval, n_skipped``
  (:func:`patchlens.evaluate.finish_table`); ``units`` (a list) receives the per-unit records of
  the bootstrap intervals (:mod:`patchlens.stats.units`).

Nothing here imports a task module or the package: importing this module (``patchlens.tasks`` is
its parent package) runs the package's ``__init__`` first, which imports every task module, so
every task is registered before anyone can ask for one. ``order`` (ascending, then the name) is
the order of tasks in tables, figures and the report.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from patchlens.errors import ConfigError
from patchlens.registry_checks import by_order, check_identity, check_order, names_by_order

# the columns of a task's run() table, and of the score table the evaluator writes from it
RUN_COLUMNS = ["layer", "seed", "metric", "value", "n_eval", "n_skipped"]
SCORE_COLUMNS = ["task", "model", "dataset", "variant", *RUN_COLUMNS, "params"]

_COLOR = re.compile(r"^#[0-9a-f]{6}$")


@dataclass(frozen=True)
class TaskSpec:
    """What one evaluation task declares.

    ``name``: the key under ``tasks:`` in the config, the rule name and the ``task`` column.
    ``title``: its heading in figures and the report. ``color``: its hex colour where several
    tasks share a panel. ``headline``: the metric (``metric`` column) the overview figures, the
    drop sweep and the best-layer summary use. ``defaults``: ``DEFAULT_PARAMS``. ``requires``:
    the ground truth the data set must have (:meth:`patchlens.data.dataset.Dataset.has`).
    ``order``: its rank in tables, figures and the report (ascending).
    ``figures``: names of the report figures (:data:`patchlens.report.figures.FIGURES`) shown in
    the task's report section (names without a figure are ignored). ``flop``: optional cost
    model ``flop(params, split_counts, dataset_entry, grid, channels, variants)`` of one layer
    with every variant for the resource plan: a dict of ``flop`` and the other named costs of
    :data:`patchlens.plan.rows.ROW_COSTS` (a number: FLOPs of one layer and one variant;
    :func:`patchlens.plan.task_cost`; without it, one pass over every token of the data set).
    ``run_variants``: optional ``run_variants(store, dataset, variants, params, layers=None,
    units=None, device="cpu") -> {variant: DataFrame}`` scoring every variant of a layer in one
    call (``variants``: {name: :class:`~patchlens.features.variants.VariantSpec`}; ``units``:
    {name: list}); without it the evaluator calls ``run`` once per variant.
    ``lower_is_better``: the task's metric names where a smaller value is the better score (the
    depth errors): the best-layer table takes their minimum, the paired verdicts and the gaps
    read them the other way (:func:`lower_is_better`). ``seed_pieces``: the task's score rows
    and units of one layer come seed after seed, so a job too long for a cluster may be cut
    into pieces of seeds and gathered back in order (:mod:`patchlens.plan.splits`); False: by
    layers only. ``query_pieces``: optional ``merge(tables, units) -> (table, units)`` of one
    layer and seed scored in parts of its query images (``run_variants(..., query_part=(i,
    parts))``): the rows and units one call over every query image gives, for a job whose one
    layer and one seed alone is too long for a cluster."""
    name: str
    title: str
    color: str
    headline: str
    defaults: Mapping
    requires: tuple[str, ...]
    check_params: Callable[[dict | None], dict]
    run: Callable
    order: int = 100
    figures: tuple[str, ...] = field(default=())
    flop: Callable | None = None
    run_variants: Callable | None = None
    lower_is_better: tuple[str, ...] = ()
    seed_pieces: bool = True
    query_pieces: Callable | None = None


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry and return it. ValueError (a programming error, raised at
    import) for a second task of the same name or a malformed declaration."""
    where = f"task {spec.name!r} ({getattr(spec.run, '__module__', '?')})"
    check_identity(spec, _REGISTRY, where, "task")
    if not isinstance(spec.color, str) or not _COLOR.match(spec.color):
        raise ValueError(f"{where}: color must be #rrggbb (lower case), got {spec.color!r}")
    if not (isinstance(spec.title, str) and spec.title and isinstance(spec.headline, str)
            and spec.headline):
        raise ValueError(f"{where}: title and headline must be non-empty strings")
    if not isinstance(spec.defaults, Mapping):
        raise ValueError(f"{where}: defaults must be a mapping (DEFAULT_PARAMS)")
    if not all(isinstance(getattr(spec, t), tuple)
               for t in ("requires", "figures", "lower_is_better")):
        raise ValueError(f"{where}: requires, figures and lower_is_better must be tuples")
    check_order(spec, where)
    for hook in ("flop", "run_variants"):
        if getattr(spec, hook) is not None and not callable(getattr(spec, hook)):
            raise ValueError(f"{where}: {hook} must be a callable or None")
    if not (callable(spec.check_params) and callable(spec.run)):
        raise ValueError(f"{where}: check_params and run must be callables")
    _REGISTRY[spec.name] = spec
    return spec


def all_tasks() -> tuple[TaskSpec, ...]:
    """Every registered :class:`TaskSpec`, by ``order`` then name."""
    return by_order(_REGISTRY)


def lower_is_better() -> frozenset[str]:
    """The metric names some task declares lower-is-better (``TaskSpec.lower_is_better``, e.g.
    the depth errors): what the best-layer table, the paired verdicts and the figures minimise."""
    return frozenset(m for spec in all_tasks() for m in spec.lower_is_better)


def task_names() -> tuple[str, ...]:
    """Every registered task's name, by ``order`` then name."""
    return names_by_order(_REGISTRY)


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; ConfigError naming ``tasks.<name>`` if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"tasks.{name}: unknown task (known: {', '.join(task_names())}); "
                          "remove it from the config or add its module to patchlens/tasks"
                          ) from None

