"""Per-unit records of the task evaluators (tidy long format) and the intervals built from them.

Every task's ``run(..., units=[])`` appends one DataFrame per (layer, seed, score) to the list;
:func:`records` builds it. Columns (``UNIT_COLUMNS``), one row per unit (and class, for ``iou`` and
``mlmap``):

* ``layer``, ``seed``, ``metric`` and the task's key columns of the score row it belongs to
  (``scale_bin``, ``sequence``, ``shots``, ``feature``, ...): the same values as that row of the
  score table, so a units record joins its score row on them;
* ``kind``: how the score re-accumulates (``ratio``, ``category_ratio``: the mean over strata of
  the within-stratum ratio, ``iou``, ``mlmap``; (:data:`patchlens.stats.bootstrap.AGGREGATORS`);
* ``unit``: the resampled unit (query image, object, sequence, keypoint pair, query) and
  ``stratum`` (resampling stratum, "" for none);
* ``cls`` (class index, -1 for ``ratio``) and the additive numbers: ``num``/``den`` (ratio),
  ``tp``/``fp``/``fn`` (iou; rows whose three counts are 0 are left out, an image without any
  counted pixel keeps one ``cls = -1`` row), ``score``/``target`` (mlmap).

The resampling unit of every task and why: docs/protocols.md#resampling-units.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from patchlens.errors import DataError
from patchlens.stats.bootstrap import DEFAULT_PARAMS, UnitData, bootstrap_ci

BASE = ["layer", "seed", "metric"]
VALUES = ["kind", "unit", "stratum", "cls", "num", "den", "tp", "fp", "fn", "score", "target"]
UNIT_COLUMNS = BASE + VALUES


def records(layer: int, seed: int, metric: str, units, agg: str = "ratio", strata=None,
            num=None, den=None, tp=None, fp=None, fn=None, score=None, target=None,
            **keys) -> pd.DataFrame:
    """Tidy units DataFrame of one score (see the module doc). ``ratio``: ``num`` (n,) and ``den``
    (n,, default 1); ``iou``: ``tp``/``fp``/``fn`` (n, K); ``mlmap``: ``score``/``target`` (n, K).
    ``keys``: the score row's task keys (e.g. ``scale_bin="all"``)."""
    units = np.asarray([str(u) for u in units], dtype=object)
    n = units.size
    strata = np.full(n, "", object) if strata is None else np.asarray(strata, dtype=str)
    if agg in ("ratio", "category_ratio"):
        num = np.asarray(num, float)
        den = np.ones(n) if den is None else np.asarray(den, float)
        cols = {"unit": units, "stratum": strata, "cls": np.full(n, -1), "num": num, "den": den}
    elif agg in ("iou", "mlmap"):
        a, b, c = ((tp, fp, fn) if agg == "iou" else (score, target, None))
        a = np.asarray(a, float)
        k = a.shape[1]
        uu, cc = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
        cols = {"unit": units[uu], "stratum": strata[uu], "cls": cc}
        if agg == "iou":
            t, f_p, f_n = a.ravel(), np.asarray(fp, float).ravel(), np.asarray(fn, float).ravel()
            keep = (t + f_p + f_n) > 0
            empty = np.setdiff1d(np.arange(n), uu[keep])
            keep[empty * k] = True          # one row for a unit without counts
            cc = np.where(keep & (t + f_p + f_n > 0), cc, -1)
            cols = {"unit": units[uu][keep], "stratum": strata[uu][keep], "cls": cc[keep],
                    "tp": t[keep], "fp": f_p[keep], "fn": f_n[keep]}
        else:
            cols.update(score=a.ravel(), target=np.asarray(target, float).ravel())
    else:
        raise ValueError(f"unknown aggregator {agg!r}")
    m = len(cols["unit"])
    df = pd.DataFrame({"layer": np.full(m, int(layer)), "seed": np.full(m, int(seed)),
                       "metric": np.full(m, metric, object), **{k: np.full(m, v) for k, v in
                                                                keys.items()},
                       "kind": np.full(m, agg, object), **cols})
    for c in VALUES:
        if c not in df:
            df[c] = np.nan
    return df


def key_columns(units: pd.DataFrame) -> list[str]:
    """The score keys of a units table: layer, metric and the task's key columns."""
    return ["layer", "metric"] + [c for c in units.columns if c not in UNIT_COLUMNS]


def unit_data(group: pd.DataFrame, order: np.ndarray | None = None
              ) -> tuple[list[UnitData], np.ndarray, np.ndarray]:
    """Per-seed :class:`UnitData` of the records of ONE score (all seeds), on a common unit order
    (``order``, default the sorted union of units); also returns the units and their strata."""
    aggs = group["kind"].unique()
    if len(aggs) != 1:
        raise DataError(f"units of metric {group['metric'].iloc[0]!r} mix aggregators {aggs}")
    agg = aggs[0]
    strata_of = group.drop_duplicates("unit").set_index("unit")["stratum"]
    units = np.asarray(sorted(strata_of.index) if order is None else order, dtype=object)
    pos = pd.Index(units)
    out = []
    for _, g in group.groupby("seed", sort=True):
        iu = pos.get_indexer(g["unit"])
        if (iu < 0).any():
            raise DataError("paired units differ: unit "
                            f"{g['unit'].to_numpy()[iu < 0][0]!r} is missing from the other side")
        n = units.size
        if agg in ("ratio", "category_ratio"):
            num, den = np.zeros(n), np.zeros(n)
            np.add.at(num, iu, g["num"].to_numpy(float))
            np.add.at(den, iu, g["den"].to_numpy(float))
            arrays = {"num": num, "den": den}
            if agg == "category_ratio":  # the category of every unit, as an integer code
                arrays["group"] = pd.factorize(strata_of.reindex(units).fillna("").to_numpy(str),
                                               sort=True)[0]
            out.append(UnitData(agg, arrays))
        else:
            cls = g["cls"].to_numpy(np.int64)
            k = int(max(cls.max(), 0)) + 1
            ok = cls >= 0
            names = ("tp", "fp", "fn") if agg == "iou" else ("score", "target")
            arrays = {}
            for name in names:
                a = np.zeros((n, k))
                a[iu[ok], cls[ok]] = g[name].to_numpy(float)[ok]
                arrays[name] = a
            if agg == "mlmap":
                arrays["target"] = arrays["target"] > 0.5
            out.append(UnitData(agg, arrays))
    if agg not in ("ratio", "category_ratio"):  # one class count for every seed
        k = max(next(iter(d.arrays.values())).shape[1] for d in out)
        for d in out:
            for name, a in d.arrays.items():
                if a.shape[1] < k:
                    d.arrays[name] = np.pad(a, ((0, 0), (0, k - a.shape[1])))
    strata = strata_of.reindex(units).fillna("").to_numpy(str)
    return out, units, strata


def intervals(units: pd.DataFrame, n_boot: int = DEFAULT_PARAMS["n_boot"],
              level: float = DEFAULT_PARAMS["level"], seed: int = DEFAULT_PARAMS["seed"]) -> pd.DataFrame:
    """One row per score (layer, metric, task keys): ``value_units`` (the score re-accumulated
    without resampling, seed mean), ``ci_low``, ``ci_high`` (bootstrap_ci), ``n_units``."""
    keys = key_columns(units)
    rows = []
    for key, g in units.groupby(keys, sort=True, dropna=False):
        data, u, strata = unit_data(g)
        v, lo, hi = bootstrap_ci(data, strata, n_boot, level, seed)
        rows.append((*key, v, lo, hi, len(u)))
    return pd.DataFrame(rows, columns=keys + ["value_units", "ci_low", "ci_high", "n_units"])


def add_intervals(table: pd.DataFrame, units: list[pd.DataFrame] | pd.DataFrame,
                  n_boot: int = DEFAULT_PARAMS["n_boot"], level: float = DEFAULT_PARAMS["level"],
                  seed: int = DEFAULT_PARAMS["seed"]) -> pd.DataFrame:
    """``table`` (a task's scores) with ``ci_low``/``ci_high`` joined on layer, metric and the
    task keys: the interval of the seed-mean score (the same on every seed row of a score). Raises
    if a score row has no units (a task that does not collect them)."""
    u = units if isinstance(units, pd.DataFrame) else pd.concat(units, ignore_index=True)
    ci = intervals(u, n_boot, level, seed)
    keys = key_columns(u)
    missing = [k for k in keys if k not in table]
    if missing:
        raise DataError(f"units carry key(s) {missing} that the score table lacks")
    out = table.drop(columns=[c for c in ("ci_low", "ci_high") if c in table])
    out = out.merge(ci[keys + ["ci_low", "ci_high"]], on=keys, how="left", validate="m:1")
    if out["ci_low"].isna().any():
        r = out[out["ci_low"].isna()].iloc[0]
        raise DataError(f"no unit records for score {', '.join(f'{k}={r[k]}' for k in keys)}")
    return out


def finish(table: pd.DataFrame, units: list[pd.DataFrame], bootstrap: dict | None = None,
           units_out=None, labels: dict | None = None) -> pd.DataFrame:
    """The evaluator's last step: ``ci_low``/``ci_high`` on every score row of ``table`` (see
    :func:`add_intervals`; ``bootstrap`` = {n_boot, level, seed}, defaults
    :data:`~patchlens.stats.bootstrap.DEFAULT_PARAMS`), and, if ``units_out`` is given, the units
    written there (parquet, with the ``labels`` columns, e.g. task/model/dataset/variant)."""
    from patchlens.io import write_parquet
    b = {**DEFAULT_PARAMS, **(bootstrap or {})}
    if not units:
        raise DataError("the task returned no unit records; it cannot be given intervals")
    u = pd.concat(units, ignore_index=True)
    out = add_intervals(table, u, int(b["n_boot"]), float(b["level"]), int(b["seed"]))
    if units_out is not None:
        write_parquet(u.assign(**(labels or {})), units_out)
    return out
