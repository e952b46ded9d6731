"""The statistics tables for the figures and the report: paired comparisons
(:mod:`patchlens.stats.paired`), token norms, and the bootstrap intervals of the overall scores
(read-only helpers, no drawing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from patchlens.analysis.registry import all_analyses
from patchlens.analysis.best_layer import overall_rows
from patchlens.errors import DataError
from patchlens.io import read_table
from patchlens.report import tables as T

# the paired comparisons and the analyses' optional tables (``Table.columns`` None: token norms)
FILES = {"paired": "paired.csv", **{t.name: t.file for s in all_analyses() for t in s.tables
                                    if t.columns is None}}


def load_tables(tables_dir) -> dict[str, pd.DataFrame]:
    """:data:`FILES`: the tables present in ``tables_dir`` (absent ones are left
    out, so the figures and sections that need them are skipped)."""
    out = {}
    for name, fname in FILES.items():
        p = Path(tables_dir) / fname
        if not p.exists():
            continue
        try:
            out[name] = read_table(p)  # its recorded SHA-256 verified
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure is a corrupt file
            raise DataError(f"{p}: unreadable table ({e.__class__.__name__}); rerun the rule "
                            "that writes it") from None
    return out


def with_intervals(ov: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`patchlens.report.tables.overall` rows with the ``ci_low``/``ci_high`` of the
    evaluator's overall score rows (``sequence``/``scale_bin`` ``all`` or none; the interval of
    the seed mean, identical on every seed row). Rows without an interval get NaN."""
    if scores is None or "ci_low" not in scores or not len(ov):
        return ov.assign(ci_low=np.nan, ci_high=np.nan)
    s = scores.copy()
    for c, d in T.EXTRA_DEFAULTS.items():
        if c not in s:
            s[c] = d
    s = overall_rows(s)
    s["metric_label"] = [T.metric_label(m, f, n, h) for m, f, n, h in
                         zip(s["metric"], s["feature"], s["shots"], s["head"])]
    keys = ["task", "model", "dataset", "variant", "layer", "metric_label"]
    ci = s.groupby(keys, dropna=False)[["ci_low", "ci_high"]].mean().reset_index()
    ci.loc[ci["ci_low"] < 0, ["ci_low", "ci_high"]] = np.nan  # -1: a file without intervals
    return ov.drop(columns=[c for c in ("ci_low", "ci_high") if c in ov]).merge(
        ci, on=keys, how="left")
