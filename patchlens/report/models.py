"""The models of a report: ``models.csv`` (one row per config entry) and each model's family,
label and depth as the figures and the report show them, read over every table."""
from __future__ import annotations

import pandas as pd

from patchlens.analysis.specs import ATTENTION, CKA
from patchlens.io import write_csv
from patchlens.models.resolve import DEFAULT_FAMILY, model_label
from patchlens.report.tables import TABLE_COLUMNS


def models_table(models: dict) -> pd.DataFrame:
    """model, label, family, n_layers, source (timm name or weights location) per config entry;
    label and family from :func:`patchlens.models.resolve.model_label` (the one source)."""
    rows = []
    for key, entry in models.items():
        entry = entry or {}
        n = entry.get("n_layers")
        label, family = model_label(str(key), entry)
        rows.append({"model": str(key), "label": label, "family": family,
                     "n_layers": int(n) if n is not None else -1,
                     "source": str(entry.get("weights") or entry.get("timm") or key)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS["models"])


def write_models(models: dict, out_path) -> pd.DataFrame:
    df = models_table(models)
    write_csv(df, out_path)
    return df


def model_families(tables: dict) -> dict[str, str]:
    """model -> family over every table: models.csv first, then scores; others
    ``DEFAULT_FAMILY`` (as :func:`patchlens.models.resolve.model_label` defaults it)."""
    fam: dict[str, str] = {}
    for name in ("scores", "models"):
        df = tables.get(name)
        if df is not None and len(df):
            fam.update(dict(zip(df["model"].astype(str), df["family"].astype(str))))
    for name, cols in (("variance", ["model"]), (ATTENTION.name, ["model"]),
                       ("offset_heads", ["model"]), ("best_layer", ["model"]),
                       (CKA.name, ["model_a", "model_b"])):
        df = tables.get(name)
        if df is not None and len(df):
            for c in cols:
                for m in df[c].astype(str).unique():
                    fam.setdefault(m, DEFAULT_FAMILY)
    return fam


def model_labels(tables: dict) -> dict[str, str]:
    """model -> the name shown in figures and the report: models.csv ``label`` (written from
    the config by :func:`patchlens.models.resolve.model_label`), else the model key."""
    df = tables.get("models")
    if df is None or not len(df) or "label" not in df:
        return {}
    lab = df["label"].where(df["label"].notna() & (df["label"].astype(str) != ""), df["model"])
    return dict(zip(df["model"].astype(str), lab.astype(str)))


def model_depths(tables: dict) -> dict[str, int]:
    """model -> number of blocks: models.csv, then scores, else 1 + the largest layer seen."""
    depth: dict[str, int] = {}
    for name in ("best_layer", "scores", "models"):
        df = tables.get(name)
        if df is not None and len(df):
            d = df[df["n_layers"].astype(int) > 0]
            depth.update(dict(zip(d["model"].astype(str), d["n_layers"].astype(int))))
    for name in (ATTENTION.name, "variance", "offset_heads"):
        df = tables.get(name)
        if df is not None and len(df):
            for m, mx in df.groupby(df["model"].astype(str))["layer"].max().items():
                depth.setdefault(m, int(mx) + 1)
    return depth
