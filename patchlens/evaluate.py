"""Run one task on one feature file and variant, and write its tidy score table."""
from __future__ import annotations

import json

import numpy as np

from patchlens.config import task_module
from patchlens.data.dataset import Dataset
from patchlens.errors import DataError
from patchlens.features.store import FeatureStore
from patchlens.features.variance import VarianceStats
from patchlens.features.variants import apply_variant, needs_stats
from patchlens.io import write_csv
from patchlens.stats.units import finish

ID_COLUMNS = ["task", "model", "dataset", "variant", "layer", "seed", "metric", "value",
              "n_eval", "n_skipped", "params"]


def make_transform(variant: str, variance_path=None):
    """``transform(layer, x)`` applying the variant with that layer's support statistics."""
    if not needs_stats(variant):
        return lambda layer, x: x
    if variance_path is None:
        raise DataError(f"variant {variant!r} needs the channel statistics file")
    stats = VarianceStats(variance_path)
    return lambda layer, x: apply_variant(x, variant, stats.mean(layer), stats.var(layer))


def evaluate(task: str, params: dict, features, dataset_dir, variant: str, out_csv,
             variance=None, labels: dict | None = None, units_out=None,
             bootstrap: dict | None = None):
    """Evaluate every layer; write the CSV atomically and return the table. Every score row gets
    ``ci_low``/``ci_high`` from the task's per-unit records (:func:`patchlens.stats.units.finish`;
    ``bootstrap``: config ``statistics``), written to ``units_out`` when given."""
    module = task_module(task)
    dataset = Dataset(dataset_dir)
    missing = [k for k in getattr(module, "REQUIRES", ()) if not dataset.has(k)]
    if missing:
        raise DataError(f"{dataset.root}: task {task} needs {', '.join(missing)} ground truth, "
                        "which this data set lacks; remove it from tasks."
                        f"{task}.datasets")
    with FeatureStore(features) as store:
        units = []
        table = module.run(store, dataset, make_transform(variant, variance), params,
                           units=units)
        n_layers = int(store.attrs.get("n_blocks", max(store.layers) + 1))
    if table.empty:
        raise DataError(f"task {task} on {features}: no score could be computed (see the log)")
    if not np.isfinite(table["value"].to_numpy(float)).all():
        raise DataError(f"task {task} on {features}: non-finite score (see the log)")
    table = finish(table, units, bootstrap, units_out,
                   {"task": task, "variant": variant, **(labels or {})})
    table = table.assign(task=task, variant=variant, params=json.dumps(params, sort_keys=True),
                         n_layers=n_layers, **(labels or {}))
    missing = [c for c in ("layer", "seed", "metric", "value", "n_eval", "n_skipped")
               if c not in table]
    if missing:
        raise RuntimeError(f"task {task} returned no {', '.join(missing)} column(s)")
    extra = [c for c in table.columns if c not in ID_COLUMNS]
    table = table[ID_COLUMNS + extra]
    write_csv(table, out_csv)
    return table
