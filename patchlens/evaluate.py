"""Run one task on one feature file for every variant, and write one tidy score table per variant.

Read once (issue 11): the feature file is read layer by layer; each layer is loaded into memory
once (:meth:`FeatureStore.layer_view <patchlens.features.store.FeatureStore.layer_view>`, the
store's interface restricted to that layer) and every variant is scored from it: in one call of
the task's ``run_variants(view, dataset, {variant: VariantSpec}, params, layers=[layer], units=,
device=)`` where the task has one (issue 20: one similarity product serves several variants),
else by calling its ``run(view, dataset, transform, params, layers=[layer])`` per variant (a
:class:`~patchlens.features.variants.VariantSpec` is a ``transform(layer, x)``). A job therefore
reads each token of the file at most once, whatever the number of variants; the view
(:class:`~patchlens.features.layer_view.LayerView`) counts the bytes it reads (logged per job,
beside the ``io_in`` of Snakemake's benchmark file).
"""
from __future__ import annotations

import inspect
import json
import logging
from itertools import groupby
from pathlib import Path

import numpy as np
import pandas as pd

from patchlens.config import task_spec
from patchlens.data.dataset import Dataset
from patchlens.device import gpu_scope
from patchlens.errors import DataError
from patchlens.features.store import FeatureStore
from patchlens.features.channel_stats import VarianceStats
from patchlens.features.variants import apply_variant, needs_stats, variant_spec
from patchlens.io import read_table, write_csv, write_parquet
from patchlens.stats.units import finish
from patchlens.tasks.registry import RUN_COLUMNS, SCORE_COLUMNS

log = logging.getLogger(__name__)

ID_COLUMNS = SCORE_COLUMNS  # identifying columns first, then the task's own


def make_transform(variant: str, variance_path=None):
    """``transform(layer, x)`` applying the variant with that layer's support statistics."""
    if not needs_stats(variant):
        return lambda layer, x: x
    if variance_path is None:
        raise DataError(f"variant {variant!r} needs the channel statistics file")
    stats = VarianceStats(variance_path)
    return lambda layer, x: apply_variant(x, variant, stats.mean(layer), stats.var(layer))


class VariantSpecs:
    """``specs(layer)``: {variant: :class:`~patchlens.features.variants.VariantSpec`} of that
    layer, from the channel statistics file (read once; needed unless every variant is raw)."""

    def __init__(self, variants, variance_path=None):
        self.variants = list(variants)
        self.stats = None
        if any(needs_stats(v) for v in self.variants):
            if variance_path is None:
                bad = next(v for v in self.variants if needs_stats(v))
                raise DataError(f"variant {bad!r} needs the channel statistics file")
            self.stats = VarianceStats(variance_path)

    def __call__(self, layer: int) -> dict:
        if self.stats is None:
            return {v: variant_spec(v) for v in self.variants}
        mean, var = self.stats.mean(layer), self.stats.var(layer)
        return {v: variant_spec(v, mean, var) for v in self.variants}


def score_layers(spec, store: FeatureStore, dataset: Dataset, transforms, params: dict,
                 device: str = "cpu", layers: list[int] | None = None,
                 query: tuple[int, int] | None = None):
    """``{variant: table}`` of every layer, each layer read once for all variants; the per-unit
    records ``{variant: [DataFrame]}`` the task collected (``run(..., units=)``, for the bootstrap
    intervals, docs/protocols.md#resampling-units); and the bytes read. ``spec`` is the task's
    :class:`~patchlens.tasks.registry.TaskSpec`; ``transforms`` is a :class:`VariantSpecs` (then a
    task with ``run_variants`` scores all variants of a layer in one call, on ``device``) or a
    dict variant -> ``transform(layer, x)`` (``run`` per variant). ``layers``: the layers scored
    (None: every layer of the store, in its order). ``query``: only part ``i`` of ``parts`` of
    the query images (``query_part=`` of a task with ``TaskSpec.query_pieces``)."""
    names = transforms.variants if isinstance(transforms, VariantSpecs) else list(transforms)
    parts: dict[str, list[pd.DataFrame]] = {v: [] for v in names}
    units: dict[str, list[pd.DataFrame]] = {v: [] for v in names}
    read = 0
    # a task whose run takes a device (tracking, hummingbird) gets the job's; the others' torch
    # paths follow the gpu_scope of evaluate_all
    on = {"device": device} if "device" in inspect.signature(spec.run).parameters else {}
    part = {} if query is None else {"query_part": tuple(query)}
    for layer in store.layers if layers is None else layers:
        view = store.layer_view(layer)
        read += view.bytes_read
        per = transforms(layer) if isinstance(transforms, VariantSpecs) else transforms
        if spec.run_variants is not None and isinstance(transforms, VariantSpecs):
            found = spec.run_variants(view, dataset, per, params, layers=[layer], units=units,
                                      device=device, **part)
            for variant in names:
                parts[variant].append(found[variant])
        else:
            for variant, transform in per.items():
                parts[variant].append(spec.run(view, dataset, transform, params,
                                               layers=[layer], units=units[variant], **on,
                                               **part))
        view.close()
    tables = {v: pd.concat(p, ignore_index=True) if p else pd.DataFrame() for v, p in parts.items()}
    return tables, units, read


def evaluate_all(task: str, params: dict, features, dataset_dir, out_csvs: dict, variance=None,
                 labels: dict | None = None, out_units: dict | None = None,
                 bootstrap: dict | None = None, device: str = "cpu") -> dict:
    """Evaluate every variant of ``out_csvs`` ({variant: path}) on every layer from one read of
    the feature file; every score row gets ``ci_low``/``ci_high`` from the task's per-unit records
    (:func:`patchlens.stats.units.finish`; ``bootstrap`` = config ``statistics``); write each CSV
    (and, with ``out_units`` = {variant: path}, each variant's units) atomically; return
    ``{"tables", "bytes_read", "file_bytes"}``. ``device``: where a task's torch paths run
    (``"cuda"``: :func:`patchlens.device.device` of the config's ``gpu``; passed to
    ``run_variants``, and a :func:`gpu_scope` for the tasks' other torch paths)."""
    tables, units, read, size = score_job(task, params, features, dataset_dir, list(out_csvs),
                                          variance, labels, device)
    out = {v: finish(table, units[v], bootstrap) for v, table in tables.items()}
    write_scores(task, out, units, out_csvs, out_units, labels)
    return {"tables": out, "bytes_read": read, "file_bytes": size}


def score_job(task: str, params: dict, features, dataset_dir, variants: list[str], variance=None,
              labels: dict | None = None, device: str = "cpu", layers: list[int] | None = None,
              seeds: list[int] | None = None, query: tuple[int, int] | None = None):
    """The score tables of :func:`evaluate_all` before their intervals ({variant: table}, checked
    and with the identifying columns), the units ({variant: [DataFrame]}), the bytes read and the
    file's size. ``layers``: positions along the file's layer axis and ``seeds``: positions into
    ``params["seeds"]`` that are scored (None: all) and ``query`` the part ``(i, parts)`` of the
    query images (None: all): a piece of a split job (:mod:`patchlens.plan.splits`); the rows
    carry the job's whole ``params``."""
    spec = task_spec(task)
    dataset = Dataset(dataset_dir)
    missing = [k for k in spec.requires if not dataset.has(k)]
    if missing:
        raise DataError(f"{dataset.root}: task {task} needs {', '.join(missing)} ground truth, "
                        "which this data set lacks; remove it from tasks."
                        f"{task}.datasets")
    run_params = params if seeds is None else {**params,
                                               "seeds": [params["seeds"][i] for i in seeds]}
    transforms = VariantSpecs(variants, variance)
    with FeatureStore(features) as store, gpu_scope(device != "cpu"):
        chosen = None if layers is None else [store.layers[i] for i in layers]
        piece = {k: v for k, v in (("layers", chosen), ("query", query)) if v is not None}
        tables, units, read = score_layers(spec, store, dataset, transforms, run_params, device,
                                           **piece)
        n_layers = int(store.attrs.get("n_blocks", max(store.layers) + 1))
    size = Path(features).stat().st_size
    log.info("%s on %s: read %.1f MB of tokens for %d variant(s) (file %.1f MB, ratio %.2f)",
             task, features, read / 1e6, len(variants), size / 1e6, read / max(size, 1))
    tables = {v: finish_table(table, task, v, params, n_layers, features, labels)
              for v, table in tables.items()}
    return tables, units, read, size


def write_scores(task: str, tables: dict, units: dict, out_csvs: dict, out_units: dict | None,
                 labels: dict | None) -> None:
    """Write every variant's finished score table (CSV) and, with ``out_units``, its units
    (parquet, with the task, variant and ``labels`` columns), each atomically."""
    for variant, table in tables.items():  # every table checked before the first is written
        if out_units:
            write_parquet(pd.concat(units[variant], ignore_index=True)
                          .assign(task=task, variant=variant, **(labels or {})),
                          out_units[variant])
        write_csv(table, out_csvs[variant])


def evaluate_piece(task: str, params: dict, features, dataset_dir, out_scores: dict,
                   out_units: dict, layers: list[int], seeds: list[int] | None = None,
                   variance=None, labels: dict | None = None, device: str = "cpu",
                   query: tuple[int, int] | None = None) -> None:
    """One piece of a split job (:func:`patchlens.plan.splits.job_pieces`): the layers at
    positions ``layers`` (each read once), the seeds at positions ``seeds`` and the part
    ``query`` of the query images (:func:`score_job`) of every variant of ``out_scores``, written
    per variant as its score rows without intervals (``out_scores``, parquet) and its units
    (``out_units``, parquet) for :func:`gather_pieces`."""
    tables, units, _, _ = score_job(task, params, features, dataset_dir, list(out_scores),
                                    variance, labels, device, layers, seeds, query)
    for variant, table in tables.items():
        write_parquet(pd.concat(units[variant], ignore_index=True) if units[variant]
                      else pd.DataFrame(), out_units[variant])
        write_parquet(table, out_scores[variant])


def gather_pieces(task: str, piece_scores: dict, piece_units: dict, out_csvs: dict,
                  out_units: dict | None = None, labels: dict | None = None,
                  bootstrap: dict | None = None, blocks: list | None = None) -> dict:
    """The outputs of a split job from its pieces (:func:`evaluate_piece`; ``piece_scores`` and
    ``piece_units``: {variant: [path of every piece, in the order of the job's layers, then
    seeds, then query parts]}): their score rows and units concatenated, so in the order one
    job over every layer and seed writes them, and the intervals computed over the gathered units
    (:func:`patchlens.stats.units.finish`: every score's units of every seed, as one job).
    ``blocks``: per piece a key, equal for the consecutive pieces that are parts of the query
    images of one (layers, seeds) cell (None: a piece of its own); the task's
    ``TaskSpec.query_pieces`` merges each such run into the rows of one piece."""
    merge = task_spec(task).query_pieces
    tables, units = {}, {}
    n = len(next(iter(piece_scores.values()), []))
    keys = blocks if blocks is not None else [None] * n
    # runs of consecutive pieces with one key (a None key: a run of its own)
    runs = [[i for i, _ in run] for _, run in
            groupby(enumerate(keys), key=lambda t: object() if t[1] is None else t[1])]
    for variant, paths in piece_scores.items():
        parts, found = [], []
        for run in runs:
            t = [read_table(paths[i]) for i in run]  # each piece's recorded SHA-256 checked
            u = [read_table(piece_units[variant][i]) for i in run]
            if len(run) > 1:
                if merge is None:
                    raise DataError(f"task {task} cannot gather parts of its query images")
                table, merged = merge(t, u)
                t, u = [table], [merged]
            parts += t
            found += [x for x in u if not x.empty]
        tables[variant] = pd.concat(parts, ignore_index=True)
        units[variant] = found
    out = {v: finish(table, units[v], bootstrap) for v, table in tables.items()}
    write_scores(task, out, units, out_csvs, out_units, labels)
    return out


def finish_table(table, task, variant, params, n_layers, features, labels):
    """Checks and identifying columns of one variant's score table."""
    if table.empty:
        raise DataError(f"task {task} on {features}: no score could be computed (see the log)")
    if not np.isfinite(table["value"].to_numpy(float)).all():
        raise DataError(f"task {task} on {features}: non-finite score (see the log)")
    table = table.assign(task=task, variant=variant, params=json.dumps(params, sort_keys=True),
                         n_layers=n_layers, **(labels or {}))
    missing = [c for c in RUN_COLUMNS if c not in table]
    if missing:
        raise RuntimeError(f"task {task} returned no {', '.join(missing)} column(s)")
    extra = [c for c in table.columns if c not in ID_COLUMNS]
    return table[ID_COLUMNS + extra]


def evaluate(task: str, params: dict, features, dataset_dir, variant: str, out_csv,
             variance=None, labels: dict | None = None, units_out=None,
             bootstrap: dict | None = None):
    """One variant (:func:`evaluate_all` with a single output); returns its table."""
    res = evaluate_all(task, params, features, dataset_dir, {variant: out_csv}, variance, labels,
                       {variant: units_out} if units_out else None, bootstrap)
    return res["tables"][variant]
