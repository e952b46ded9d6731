"""Paired model comparisons at the best and at the last layer, over the same units.

For each (task, data set, variant, metric, task keys) and each pair of models that both have
units there, the two models are compared at their best layer (argmax of the seed-mean score,
:func:`patchlens.analysis.best_layer.best_layer_table`) and at their last scored block, with
:func:`patchlens.stats.bootstrap.paired_bootstrap`: one resample of the shared units (and seeds)
for both models, so difficulty shared by the units cancels (docs/protocols.md#resampling-units). Both models must
have exactly the same units (the same query images, objects, pairs...): they do when they were
evaluated on the same data set with the same task parameters; otherwise a DataError names them.
The p-value comes from the exact sign-flip test up to ``EXACT_MAX_UNITS`` units, else from the
bootstrap test (column ``p_test``); ``p_floor`` is the smallest p that test can give.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from patchlens.analysis.best_layer import ITEM_COLUMNS, TASK_KEYS, best_layer_table
from patchlens.errors import DataError
from patchlens.io import read_table
from patchlens.stats.bootstrap import (DEFAULT_PARAMS, EXACT_MAX_UNITS, p_floor,
                                       paired_bootstrap, point)
from patchlens.stats.units import UNIT_COLUMNS, unit_data

SCORE_KEYS = ["task", "dataset", "variant", "metric"]
COLUMNS = SCORE_KEYS + list(TASK_KEYS) + ["layer_choice", "model_a", "model_b", "layer_a", "layer_b",
                                    "value_a", "value_b", "diff", "ci_low", "ci_high", "p_value",
                                    "p_test", "p_floor", "n_units", "n_seeds"]
LABELS = ["task", "model", "dataset", "variant"]


def layer_choices(scores: pd.DataFrame, lower_is_better=frozenset()) -> pd.DataFrame:
    """Best and last block per (model, task, dataset, variant, metric, task keys) of the overall
    rows: the best-layer table (one home for that choice), built from the scores table's key
    columns only."""
    cols = ["model", "dataset", "task", "variant", "metric", "layer", "seed", "value", "n_layers"]
    cols += [c for c in list(TASK_KEYS) + list(ITEM_COLUMNS) if c in scores]
    return best_layer_table(scores[cols], lower_is_better)


def _select(units: pd.DataFrame, layer: int, metric: str, keys: dict) -> pd.DataFrame:
    """The units of one overall score (per-item columns ``all`` or empty)."""
    sel = (units["layer"] == layer) & (units["metric"] == metric)
    for k, v in keys.items():
        if k in units:
            sel &= units[k].astype(str) == str(v)
    for c in ITEM_COLUMNS:
        if c in units:
            sel &= units[c].fillna("").astype(str).isin(["all", ""])
    return units[sel]


def paired_table(scores: pd.DataFrame, units: dict, n_boot: int = DEFAULT_PARAMS["n_boot"],
                 level: float = DEFAULT_PARAMS["level"], seed: int = DEFAULT_PARAMS["seed"],
                 lower_is_better=frozenset()) -> pd.DataFrame:
    """The paired table (module doc). ``units``: {(task, model, dataset, variant): units
    DataFrame (:mod:`patchlens.stats.units`)}; ``lower_is_better``: the metrics whose best layer
    is their minimum (:func:`patchlens.tasks.registry.lower_is_better`)."""
    choices = layer_choices(scores, lower_is_better)
    keys = [k for k in TASK_KEYS if k in choices]
    rows = []
    for key, g in choices.groupby(SCORE_KEYS + keys, sort=True, dropna=False):
        kv = dict(zip(SCORE_KEYS + keys, key))
        task, dataset, variant, metric = (kv[k] for k in SCORE_KEYS)
        tk = {k: kv[k] for k in keys}
        g = g.set_index("model")
        models = sorted(m for m in g.index if (task, m, dataset, variant) in units)
        for ma, mb in combinations(models, 2):
            for choice, col in (("best", "best_layer"), ("last", "last_layer")):
                if pd.isna(g.at[ma, col]) or pd.isna(g.at[mb, col]):
                    continue  # that block was not scored (a layer subset)
                la, lb = int(g.at[ma, col]), int(g.at[mb, col])
                ua = _select(units[(task, ma, dataset, variant)], la, metric, tk)
                ub = _select(units[(task, mb, dataset, variant)], lb, metric, tk)
                if ua.empty or ub.empty:
                    continue
                if set(ua["unit"]) != set(ub["unit"]):
                    raise DataError(f"units of {task}/{ma} and {task}/{mb} on {dataset} "
                                    f"({variant}, {metric}) differ; rerun both with the same "
                                    "task parameters")
                da, order, strata = unit_data(ua)
                db, _, _ = unit_data(ub, order)
                if len(da) != len(db):
                    raise DataError(f"{task}: {ma} and {mb} have different support seeds")
                d, lo, hi, p = paired_bootstrap(da, db, strata, n_boot, level, seed)
                rows.append({**kv, "layer_choice": choice, "model_a": ma, "model_b": mb,
                             "layer_a": la, "layer_b": lb, "value_a": point(da),
                             "value_b": point(db), "diff": d, "ci_low": lo, "ci_high": hi,
                             "p_value": p, "p_test": ("sign-flip exact"
                                                       if len(order) <= EXACT_MAX_UNITS
                                                       else "bootstrap"),
                             "p_floor": p_floor(len(order), n_boot), "n_units": len(order),
                             "n_seeds": len(da)})
    out = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in out:
            out[c] = pd.Series(dtype=object)
    return out[COLUMNS]


def read_units(paths) -> dict:
    """{(task, model, dataset, variant): units} from units parquet files (label columns)."""
    out = {}
    for p in paths:
        df = read_table(p)  # its recorded SHA-256 verified; a damaged file names itself
        missing = [c for c in LABELS + UNIT_COLUMNS if c not in df]
        if missing:
            raise DataError(f"{p}: not a units file (missing {missing}); rerun its task rule")
        if df.empty:
            continue
        out[tuple(str(df[c].iloc[0]) for c in LABELS)] = df.drop(columns=LABELS)
    return out


def verdict(row, lower_is_better=frozenset()) -> str:
    """'a > b' / 'b > a' (a scores better: higher, or lower for the metrics in
    ``lower_is_better``, :func:`patchlens.tasks.registry.lower_is_better`) where the interval of
    a - b excludes 0, else '' (no claim)."""
    lo, hi = row["ci_low"], row["ci_high"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    if row.get("metric") in lower_is_better:  # a smaller error is the better score
        lo, hi = -hi, -lo
    if lo > 0:
        return f"{row['model_a']} > {row['model_b']}"
    if hi < 0:
        return f"{row['model_b']} > {row['model_a']}"
    return ""
