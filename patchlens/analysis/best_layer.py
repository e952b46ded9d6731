"""Best layer per (model, dataset, task, variant, metric, task keys) from the tidy scores table.

Walmer et al. (CVPR 2023, "Teaching Matters", Sec. 6) show that the best layer for a local task
depends on the task and on the supervision, and is often not the last one; this table reports it
with the gap to the last block (protocol: ``docs/protocols.md``, "Best layer"). It is the one
implementation: the ``best_layer`` rule, the figures, the HTML report and the paired comparisons
all call :func:`best_layer_table`.

Protocol, on ``results/tables/scores.parquet`` (as ``collect_scores`` writes it):
1. Rows: only the overall rows -- where a per-item column (:data:`ITEM_COLUMNS`: ``sequence``,
   ``scale_bin``, ``category``) applies, its value ``all``; ``""`` / missing where it does not.
   The best layer of one video or one scale bin is not the headline.
2. Keys: model, dataset, task, variant, metric and the task's own keys (:data:`TASK_KEYS`, e.g.
   low-shot ``shots`` and ``feature``) that the table carries. Counts (``n_*`` columns), the job's
   ``params``, and the per-model columns ``collect_scores`` adds (``family``, ``label``,
   ``depth_frac``) are never keys; any other column is refused (:class:`DataError`), so a new
   column can neither split nor silently merge rows.
3. Per (keys, layer): the mean over seeds (each seed must have exactly one row).
4. ``best_value`` = max over ALL scored layers (the block outputs 0..n_blocks-1 and, where the
   features carry it, the final-norm output ``layer == n_blocks``) -- min for the metrics in
   ``lower_is_better`` (the tasks' ``TaskSpec.lower_is_better``, e.g. the depth errors, which
   the callers above the task registry pass: :func:`patchlens.tasks.registry.lower_is_better`);
   ties go to the shallower
   layer, where a tie is a seed mean within :data:`TIE` (``np.isclose`` rtol / atol) of the best
   one, so two equal means that summation order left one ulp apart tie.
   ``last_layer = n_blocks - 1`` (``n_layers`` column), ``last_value`` the
   seed mean there (NaN if that block was not scored), ``gap = best_value - last_value`` (>= 0
   for higher-is-better metrics; ``last_value - best_value`` for lower-is-better ones, so the gap
   is always the improvement over the last block). ``depth_frac = (best_layer + 1) / n_layers``
   (1 for the final-norm entry);
   ``n_seeds`` = distinct seeds behind the best value.
No torch import.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from patchlens.errors import DataError

KEYS = ["model", "dataset", "task", "variant", "metric"]
TASK_KEYS = ("shots", "feature", "head", "k")       # a task's own keys, where a table has them
ITEM_COLUMNS = ("sequence", "scale_bin", "category")  # per-item breakdowns; "all" = overall row
OVERALL = "all"
NOT_KEYS = {"layer", "seed", "value", "n_layers", "params", "family", "label", "depth_frac",
            "ci_low", "ci_high"}  # the intervals belong to a row, they never split one
TIE = {"rtol": 1e-9, "atol": 1e-12}  # seed means this close are equal (best-layer ties)
OUT_TAIL = ["best_layer", "best_value", "last_layer", "last_value", "gap", "n_layers",
            "depth_frac", "n_seeds"]


def task_keys(scores: pd.DataFrame) -> list[str]:
    """The task-key columns of ``scores`` (see the module doc, step 2); raises on a column that
    is none of key, item, count or per-model column."""
    unknown = [c for c in scores.columns if c not in set(KEYS) | NOT_KEYS | set(TASK_KEYS)
               | set(ITEM_COLUMNS) and not c.startswith("n_")]
    if unknown:
        raise DataError(f"scores table: column(s) {unknown} are neither a task key nor a count; "
                        "add them to TASK_KEYS (they split rows) or name them n_* (counts) in "
                        "patchlens/analysis/best_layer.py")
    return [c for c in TASK_KEYS if c in scores.columns]


def overall_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows whose per-item columns are ``all`` or empty (the task-level score)."""
    keep = np.ones(len(scores), bool)
    for c in ITEM_COLUMNS:
        if c in scores.columns:
            v = scores[c]
            keep &= (v.isna() | v.astype(str).isin([OVERALL, ""])).to_numpy()
    return scores[keep]


def best_layer_table(scores: pd.DataFrame, lower_is_better=frozenset()) -> pd.DataFrame:
    """One row per (model, dataset, task, variant, metric, task keys): best_layer, best_value,
    last_layer, last_value, gap, n_layers, depth_frac, n_seeds (module doc); the metrics in
    ``lower_is_better`` are minimised."""
    missing = [c for c in KEYS + ["layer", "value", "n_layers"] if c not in scores]
    if missing:
        raise DataError(f"scores table: missing column(s) {missing}; expected the table "
                        "collect_scores writes (results/tables/scores.parquet)")
    keys = KEYS + task_keys(scores)
    df = overall_rows(scores).copy()
    if "seed" not in df:
        df["seed"] = 0
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df = df[np.isfinite(df["value"].to_numpy())]
    if df.empty:
        return pd.DataFrame(columns=keys + OUT_TAIL)
    df["layer"] = df["layer"].astype(int)
    df["n_layers"] = df["n_layers"].astype(int)
    dup = df.duplicated(keys + ["layer", "seed"], keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise DataError("scores table: several overall rows for "
                        + ", ".join(f"{k}={r[k]}" for k in keys + ["layer", "seed"])
                        + "; a per-item column is missing from ITEM_COLUMNS or a task key "
                        "from TASK_KEYS in patchlens/analysis/best_layer.py")

    mean = (df.groupby(keys + ["layer"], dropna=False, sort=True)
              .agg(value=("value", "mean"), n_seeds=("seed", "nunique"),
                   n_layers=("n_layers", "max"))
              .reset_index())
    lower = list(lower_is_better)
    sign = np.where(mean["metric"].isin(lower), -1.0, 1.0)
    mean["score"] = sign * mean["value"]
    # best: highest score; every layer within TIE of it ties, and the shallowest of them wins
    top = mean.groupby(keys, dropna=False, sort=False)["score"].transform("max")
    tied = mean[np.isclose(mean["score"], top, **TIE)]
    best = (tied.sort_values(keys + ["layer"], kind="stable")
                .drop_duplicates(keys, keep="first").reset_index(drop=True))
    n_layers = mean.groupby(keys, dropna=False, sort=False)["n_layers"].transform("max")
    last = mean[mean["layer"] == n_layers - 1][keys + ["value"]].rename(
        columns={"value": "last_value"})
    out = best[keys].copy()
    out["best_layer"] = best["layer"].astype(int)
    out["best_value"] = best["value"]
    out["n_layers"] = best["n_layers"].astype(int)
    out["last_layer"] = out["n_layers"] - 1
    out = out.merge(last, on=keys, how="left")
    s = np.where(out["metric"].isin(lower), -1.0, 1.0)
    out["gap"] = s * (out["best_value"] - out["last_value"])
    # the final-norm entry (layer == n_blocks) sits at full depth, like the last block
    out["depth_frac"] = (np.minimum(out["best_layer"], out["last_layer"]) + 1) / out["n_layers"]
    out["n_seeds"] = best["n_seeds"].astype(int).to_numpy()
    return out[keys + OUT_TAIL].sort_values(keys, na_position="last").reset_index(drop=True)
