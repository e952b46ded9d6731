"""Best layer per (model, dataset, task, variant, metric) from the tidy scores table.

Walmer et al. (CVPR 2023, "Teaching Matters", Sec. 6) show that the best layer for a local task
depends on the task and on the supervision, and is often not the last one; this table reports it
with the gap to the last layer.

Protocol:
1. Keys are model, dataset, task, variant, metric plus every extra column of the table (e.g.
   ``scale_bin``, ``shots``, ``feature``) except ``layer``, ``seed``, ``value``, ``n_layers`` and
   the ignored columns (default ``params``: the parameters are fixed per job; seeds must not be
   encoded in them). Missing extra values (a column only some tasks have) form their own key.
2. Per-item breakdowns (``item_columns``, default ``sequence``): within a task that also reports
   the overall row (``sequence == "all"``), only the overall rows are kept -- the best layer of a
   single video is noise, the headline is the overall score. A task without an overall row keeps
   its per-item rows as keys.
3. Values are averaged over seeds per (keys, layer); NaN scores are ignored.
4. best_layer = argmax over layers of the seed mean (higher is better for every patchlens metric;
   ties go to the shallower layer); last_value = the seed mean at the deepest scored layer;
   gap = best_value - last_value (>= 0); n_layers = the ``n_layers`` column if present, else the
   deepest layer scored for that model in the whole table + 1; depth_frac = (best_layer + 1) /
   n_layers. n_seeds = number of distinct seeds behind the best value.
No torch import.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from patchlens.errors import DataError

KEYS = ["model", "dataset", "task", "variant", "metric"]
RESERVED = {"layer", "seed", "value", "n_layers"}
OUT_TAIL = ["best_layer", "n_layers", "depth_frac", "best_value", "last_value", "gap", "n_seeds"]


def _overall_only(df: pd.DataFrame, item_columns, overall: str) -> pd.DataFrame:
    for col in item_columns:
        if col not in df:
            continue
        is_overall = df[col].astype(str) == str(overall)
        task_has = is_overall.groupby(df["task"]).transform("any")
        drop = task_has & ~is_overall & df[col].notna()
        df = df[~drop]
    return df


def best_layer_table(scores: pd.DataFrame, item_columns=("sequence",), overall: str = "all",
                     ignore=("params",)) -> pd.DataFrame:
    """Best layer table (see module doc) with columns model, dataset, task, variant, metric,
    <extra keys>, best_layer, n_layers, depth_frac, best_value, last_value, gap, n_seeds."""
    missing = [c for c in KEYS + ["layer", "value"] if c not in scores]
    if missing:
        raise DataError(f"scores table: missing column(s) {missing}; expected at least "
                        f"{KEYS + ['layer', 'seed', 'value']}")
    extras = [c for c in scores.columns if c not in set(KEYS) | RESERVED | set(ignore)]
    keys = KEYS + extras
    df = scores.copy()
    if "seed" not in df:
        df["seed"] = 0
    df = _overall_only(df, item_columns, overall)
    df = df[np.isfinite(pd.to_numeric(df["value"], errors="coerce"))]
    if df.empty:
        return pd.DataFrame(columns=keys + OUT_TAIL)
    df["value"] = df["value"].astype(float)
    df["layer"] = df["layer"].astype(int)

    if "n_layers" in df:
        df["n_layers"] = df["n_layers"].astype(int)
    else:
        df["n_layers"] = df.groupby("model")["layer"].transform("max") + 1

    mean = (df.groupby(keys + ["layer"], dropna=False, sort=True)
              .agg(value=("value", "mean"), n_seeds=("seed", "nunique"),
                   n_layers=("n_layers", "max"))
              .reset_index())
    g = mean.groupby(keys, dropna=False, sort=False)
    best = mean.loc[g["value"].idxmax().to_numpy()].reset_index(drop=True)
    last = mean.loc[g["layer"].idxmax().to_numpy()].reset_index(drop=True)
    out = best[keys].copy()
    out["best_layer"] = best["layer"].astype(int)
    out["n_layers"] = best["n_layers"].astype(int)
    out["depth_frac"] = (out["best_layer"] + 1) / out["n_layers"]
    out["best_value"] = best["value"]
    out["last_value"] = last["value"]
    out["gap"] = out["best_value"] - out["last_value"]
    out["n_seeds"] = best["n_seeds"].astype(int)
    return out.sort_values(keys, na_position="last").reset_index(drop=True)
