"""Summary tables under ``results/tables/``: every score CSV in one tidy table, the model list, and
the reductions the figures and the report share (the variance spectra:
:mod:`patchlens.report.variance_table`).

Files (all written atomically):
    scores.parquet    every row of ``scores/{task}/{model}/{dataset}/{variant}.csv`` plus the
                      model's ``family``, ``n_layers`` and ``depth_frac = (layer + 1) / n_layers``
    variance.parquet  model, dataset, layer, rank, variance (channel variances sorted descending)
    models.csv        model, label, family, n_layers, source (so every figure names and colours
                      models alike; label and family from ``models.resolve.model_label``)
Tables written by the analysis stage and read here: each analysis's tables (``AnalysisSpec.tables``
in :mod:`patchlens.analysis.specs`) and best_layer.csv (columns in :data:`TABLE_COLUMNS`).

Pure functions take and return DataFrames; only ``write_*`` and ``load_tables`` touch files.
No torch import.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from patchlens.analysis.best_layer import ITEM_COLUMNS, OVERALL  # the task-level rows: one home
from patchlens.analysis.registry import all_analyses
from patchlens.errors import ConfigError, DataError
from patchlens.features.variants import parse_variant
from patchlens.io import read_table, write_parquet
from patchlens.models.resolve import DEFAULT_FAMILY, model_label
from patchlens.tasks.registry import SCORE_COLUMNS, all_tasks

_INT_COLUMNS = ["layer", "seed", "n_eval", "n_skipped"]
_STR_COLUMNS = ["task", "model", "dataset", "variant", "metric", "params"]
# optional columns some tasks add; absent ones are filled so parquet has one dtype per column
EXTRA_DEFAULTS = {"scale_bin": "", "sequence": "", "category": "", "shots": -1, "feature": "",
                  "head": ""}
MODEL_COLUMNS = ["family", "n_layers", "depth_frac"]

# model families (config ``family``), in the order figures and tables list them
FAMILIES = ["contrastive", "mim", "language", "supervised", "baseline", "test", DEFAULT_FAMILY]

# primary metric of each task (the one the overview figures and the drop sweep use), in task order
HEADLINE_METRIC = {s.name: s.headline for s in all_tasks()}
TASK_ORDER = list(HEADLINE_METRIC)

# the analyses' tables the report checks (those with columns; the others:
# patchlens.report.statistics), declared by each analysis (patchlens.analysis.specs)
ANALYSIS_TABLES = [t for s in all_analyses() for t in s.tables if t.columns is not None]
TABLE_FILES = {
    "scores": "scores.parquet",
    "variance": "variance.parquet",
    "models": "models.csv",
    **{t.name: t.file for t in ANALYSIS_TABLES},
    "best_layer": "best_layer.csv",
    "patch_pca": "patch_pca.parquet",
}
TABLE_COLUMNS = {
    "scores": SCORE_COLUMNS + list(EXTRA_DEFAULTS) + MODEL_COLUMNS,
    "variance": ["model", "dataset", "layer", "rank", "variance"],
    "models": ["model", "label", "family", "n_layers", "source"],
    **{t.name: list(t.columns) for t in ANALYSIS_TABLES},
    "best_layer": ["model", "dataset", "task", "variant", "metric", "best_layer", "best_value",
                   "last_layer", "last_value", "gap", "n_layers", "depth_frac", "n_seeds"],
    "patch_pca": ["kind", "model", "dataset", "image", "layer", "n_layers", "row", "col", "r", "g",
                  "b"],  # patchlens.report.patch_pca.patch_pca_table
}


# --------------------------------------------------------------------------------------- scores
def _read_score_csv(path: Path) -> pd.DataFrame:
    try:
        df = read_table(path, dtype={c: str for c in ("params", "scale_bin", "sequence",
                                                       "feature", "head")})
    except FileNotFoundError:
        raise DataError(f"{path}: score file not found; rerun its task rule") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable score CSV ({type(e).__name__}); "
                        "delete it and rerun its task rule") from None
    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                        f"{', '.join(SCORE_COLUMNS)} (rerun its task rule)")
    for c in SCORE_COLUMNS:
        bad = df[c].isna().to_numpy()
        if bad.any():
            raise DataError(f"{path}: NaN in column {c!r} at line {int(np.argmax(bad)) + 2}; "
                            "the evaluator must write a finite value (rerun its task rule)")
    for c in ["value"] + _INT_COLUMNS:
        num = pd.to_numeric(df[c], errors="coerce")
        x = num.to_numpy(dtype="float64")
        bad = ~np.isfinite(x)
        if c in _INT_COLUMNS:
            bad |= np.isfinite(x) & (x % 1 != 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: column {c!r} line {i + 2} holds {df[c].iloc[i]!r}, "
                            f"expected a finite {'integer' if c in _INT_COLUMNS else 'number'}")
        df[c] = num.astype("int64") if c in _INT_COLUMNS else num.astype("float64")
    for i, p in enumerate(df["params"]):
        try:
            json.loads(p)
        except (TypeError, ValueError):
            raise DataError(f"{path}: column 'params' line {i + 2} is not a JSON string") from None
    df["_file"] = str(path)
    return df


def _fill_extras(df: pd.DataFrame) -> pd.DataFrame:
    """Give every optional column one dtype: strings filled with "", integers with -1."""
    extras = [c for c in df.columns if c not in SCORE_COLUMNS and c != "_file"]
    for c in list(EXTRA_DEFAULTS) + sorted(set(extras) - set(EXTRA_DEFAULTS)):
        default = EXTRA_DEFAULTS.get(c)
        col = df[c] if c in df.columns else pd.Series([pd.NA] * len(df), index=df.index)
        num = pd.to_numeric(col, errors="coerce")
        numeric = default == -1 or (default is None and col.notna().any()
                                    and num[col.notna()].notna().all())
        if numeric:
            num = num.fillna(-1)
            df[c] = num.astype("int64") if (num % 1 == 0).all() else num.astype("float64")
        else:
            df[c] = col.map(lambda v: "" if pd.isna(v) else str(v)).astype(str)
    return df


def _empty_scores() -> pd.DataFrame:
    ints, floats = set(_INT_COLUMNS) | {"shots", "n_layers"}, {"value", "depth_frac"}
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else "float64" if c in floats
                                      else str) for c in TABLE_COLUMNS["scores"]})


def collect_scores(csv_paths, models: dict) -> pd.DataFrame:
    """Concatenate score CSVs into one tidy table with the model's family and depth.

    ``models`` maps model key -> config entry; ``family`` (contrastive, mim, language, supervised,
    baseline, test) and ``n_layers`` (blocks in the network, from the entry or the feature file's
    attributes) are read from it. ``depth_frac = (layer + 1) / n_layers`` puts models of different
    depth on one axis (Walmer et al. 2023, "Teaching Matters", compare layers by relative depth).
    Raises :class:`DataError` naming the CSV when a column is missing, a value is NaN or two
    files hold the same score, and :class:`ConfigError` for a model missing from ``models``.
    """
    frames = [_read_score_csv(Path(p)) for p in csv_paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty_scores()
    df = pd.concat(frames, ignore_index=True)
    # the evaluators record the network depth (feature file attribute n_blocks) in each CSV
    from_csv = {}
    if "n_layers" in df.columns:
        from_csv = df.groupby("model")["n_layers"].max().astype(int).to_dict()
        df = df.drop(columns="n_layers")
    df = _fill_extras(df)
    for c in _STR_COLUMNS:
        df[c] = df[c].astype(str)
    extras = [c for c in df.columns if c not in SCORE_COLUMNS and c != "_file"]

    fam, nl = {}, {}
    for m in df["model"].unique():
        entry = models.get(m)
        if entry is None:
            f = df.loc[df["model"] == m, "_file"].iloc[0]
            raise ConfigError(f"{f}: model {m!r} is not in config.models; add it or delete the "
                              "stale score file")
        n = entry.get("n_layers", from_csv.get(m))
        if n is None or int(n) < 1:
            raise ConfigError(f"models.{m}.n_layers: missing; pass the number of blocks "
                              "(feature file attribute n_blocks) to collect_scores")
        fam[m], nl[m] = model_label(m, entry)[1], int(n)
    df["family"] = df["model"].map(fam).astype(str)
    df["n_layers"] = df["model"].map(nl).astype("int64")
    # layers 0..n_blocks-1 are block outputs; layer == n_blocks is the final-norm output
    bad = (df["layer"] < 0) | (df["layer"] > df["n_layers"])
    if bad.any():
        r = df[bad].iloc[0]
        raise DataError(f"{r['_file']}: layer {r['layer']} outside 0..{r['n_layers']} of "
                        f"model {r['model']!r} ({r['n_layers']} blocks + the final-norm output); "
                        f"check models.{r['model']}.n_layers")
    df["depth_frac"] = (df["layer"] + 1) / df["n_layers"]

    key = ["task", "model", "dataset", "variant", "layer", "seed", "metric"] + extras
    dup = df.duplicated(key, keep=False)
    if dup.any():
        d = df[dup].sort_values(key)
        files = sorted(set(d["_file"].iloc[:2]))
        what = ", ".join(f"{k}={d[k].iloc[0]}" for k in key[:7])
        raise DataError(f"{' and '.join(files)}: the same score ({what}) appears twice; "
                        "remove the stale or duplicated file")
    df = df.drop(columns="_file").sort_values(key, kind="stable").reset_index(drop=True)
    return df[SCORE_COLUMNS + extras + MODEL_COLUMNS]


def write_scores(csv_paths, models: dict, out_path) -> pd.DataFrame:
    """:func:`collect_scores` and write it to ``out_path`` (parquet, atomically)."""
    df = collect_scores(csv_paths, models)
    write_parquet(df, out_path)
    return df


# --------------------------------------------------------------------------------------- loading
def empty_table(name: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in TABLE_COLUMNS[name]})


def load_tables(tables_dir) -> dict[str, pd.DataFrame]:
    """Read every known table in ``tables_dir``; a missing file gives an empty table with the
    expected columns (figures then skip), a file lacking a column raises :class:`DataError`."""
    tables_dir = Path(tables_dir)
    out = {}
    for name, fname in TABLE_FILES.items():
        p = tables_dir / fname
        if not p.exists():
            out[name] = empty_table(name)
            continue
        try:
            df = read_table(p)  # its recorded SHA-256 verified
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure is a corrupt file
            raise DataError(f"{p}: unreadable table ({e.__class__.__name__}); rerun the rule "
                            "that writes it") from None
        missing = [c for c in TABLE_COLUMNS[name] if c not in df.columns]
        if missing:
            raise DataError(f"{p}: missing column(s) {', '.join(missing)}; rerun the rule that "
                            "writes it")
        if name == "offset_heads":
            df["flagged"] = flag_mask(df["flagged"])
        out[name] = df
    return out


def flag_mask(col: pd.Series) -> pd.Series:
    """Booleans from a flag column read from CSV (True/False, 1/0, yes/no, any case)."""
    if col.dtype == bool:
        return col
    return col.astype(str).str.strip().str.lower().isin(["true", "1", "1.0", "yes"])


# ------------------------------------------------------------------------------------ reductions
def metric_label(metric: str, feature: str = "", shots: int = -1, head: str = "") -> str:
    """'acc' plus the qualifiers that tell apart rows of one metric, e.g. 'acc (cls, 5-shot)'."""
    q = [str(x) for x in (head, feature) if x not in ("", None)]
    if shots is not None and int(shots) >= 0:
        q.append(f"{int(shots)}-shot")
    return f"{metric} ({', '.join(q)})" if q else metric


def family_order(family: str) -> int:
    """Position of a family in :data:`FAMILIES` (unknown names last)."""
    return FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)


def _pick_overall(df: pd.DataFrame, col: str, key: list[str]) -> pd.DataFrame:
    """Keep the ``all`` rows of ``col`` where a group has them; otherwise keep every bin."""
    is_all = df[col] == OVERALL
    has_all = is_all.groupby([df[k] for k in key], sort=False).transform("any")
    return df[is_all | ~has_all]


def overall(scores: pd.DataFrame) -> pd.DataFrame:
    """One task-level score per (task, model, dataset, variant, layer, metric label).

    Rows whose per-item column (``sequence``, ``scale_bin``, ``category``: ``ITEM_COLUMNS``) is
    ``all`` are the evaluator's overall score and are used where present; otherwise the items are
    averaged (macro mean). Then seeds are
    averaged: ``value`` = mean, ``std`` = standard deviation over seeds (0 for one seed),
    ``n_seeds``. ``metric_label`` adds the low-shot feature/shots (and head) to the metric.
    """
    cols = ["task", "model", "dataset", "variant", "layer", "metric", "metric_label", "family",
            "n_layers", "depth_frac", "value", "std", "n_seeds"]
    if scores is None or not len(scores):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    df = scores.copy()
    for c, d in EXTRA_DEFAULTS.items():
        if c not in df.columns:
            df[c] = d
    df["metric_label"] = [metric_label(m, f, s, h) for m, f, s, h in
                          zip(df["metric"], df["feature"], df["shots"], df["head"])]
    base = ["task", "model", "dataset", "variant", "layer", "metric_label", "seed"]
    for col in ITEM_COLUMNS:
        df = _pick_overall(df, col, base + [c for c in ITEM_COLUMNS if c != col])
    keep = ["task", "model", "dataset", "variant", "layer", "metric", "metric_label", "family",
            "n_layers", "depth_frac"]
    per_seed = df.groupby(keep + ["seed"], sort=True, dropna=False)["value"].mean().reset_index()
    g = per_seed.groupby(keep, sort=True, dropna=False)["value"]
    out = g.agg(value="mean", std="std", n_seeds="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out[cols]


def drop_m(variant: str) -> int | None:
    """'raw' -> 0, 'drop4' -> 4, anything else (zscore) -> None."""
    try:
        kind, m = parse_variant(str(variant))
    except ConfigError:
        return None
    return m if kind in ("raw", "drop") else None


def best_drop_variant(ov: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model, dataset, metric_label) the ``drop{m}`` variant whose best layer scores
    highest (ties: the smaller m). Columns: task, model, dataset, metric_label, variant, m."""
    key = ["task", "model", "dataset", "metric_label"]
    cols = key + ["variant", "m"]
    if not len(ov):
        return pd.DataFrame(columns=cols)
    d = ov.assign(m=ov["variant"].map(drop_m))
    d = d[d["m"].notna() & (d["variant"] != "raw")]
    if not len(d):
        return pd.DataFrame(columns=cols)
    best = d.groupby(key + ["variant", "m"], sort=False)["value"].max().reset_index()
    best = best.sort_values(key + ["value", "m"], ascending=[True] * len(key) + [False, True])
    best = best.drop_duplicates(key, keep="first")
    best["m"] = best["m"].astype(int)
    return best[cols].reset_index(drop=True)


def headline(ov: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's primary metric (:data:`HEADLINE_METRIC`; the first label when the
    task lacks it, e.g. a pck at another alpha). For low-shot, the patch feature and the most
    shots are preferred."""
    if not len(ov):
        return ov
    parts = []
    for task, d in ov.groupby("task", sort=False):
        want = HEADLINE_METRIC.get(task)
        metric = want if want in set(d["metric"]) else sorted(d["metric"].unique())[0]
        d = d[d["metric"] == metric]
        labels = sorted(d["metric_label"].unique(), key=_label_pref)
        parts.append(d[d["metric_label"] == labels[0]])
    return pd.concat(parts, ignore_index=True)


def _label_pref(label: str):
    """Order metric labels: patch before cls, then more shots first."""
    shots = re.search(r"(\d+)-shot", label)
    return ("cls" in label, -int(shots.group(1)) if shots else 0, label)


def best_layer_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`patchlens.analysis.best_layer.best_layer_table` of ``scores`` (the one best-layer
    implementation) with the ``metric_label`` the figures use and the model's ``family``."""
    from patchlens.analysis.best_layer import best_layer_table
    from patchlens.tasks.registry import lower_is_better

    bl = best_layer_table(scores, lower_is_better())
    for c, d in EXTRA_DEFAULTS.items():
        if c not in bl.columns:
            bl[c] = d
    bl["metric_label"] = [metric_label(m, f, s, h) for m, f, s, h in
                          zip(bl["metric"], bl["feature"], bl["shots"], bl["head"])]
    fam = dict(zip(scores["model"], scores["family"])) if "family" in scores else {}
    bl["family"] = bl["model"].map(lambda m: fam.get(m, DEFAULT_FAMILY))
    return bl


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Best score per model x task x metric: the best layer of the ``raw`` features, and the best
    over every variant (``best_any``, ``variant_any``) so a gain from dropping channels shows.
    Both from :func:`best_layer_rows`; the variant is chosen on the evaluation split (the
    scores' query split), so ``best_any`` is optimistic and labelled so in the report.

    Columns: task, dataset, metric, model, family, raw_best, raw_layer, n_layers, best_any,
    variant_any, layer_any. Sorted by task order, data set, metric, family, model.
    """
    cols = ["task", "dataset", "metric", "model", "family", "raw_best", "raw_layer", "n_layers",
            "best_any", "variant_any", "layer_any"]
    if scores is None or not len(scores):
        return pd.DataFrame(columns=cols)
    bl = best_layer_rows(scores)
    if not len(bl):
        return pd.DataFrame(columns=cols)
    key = ["task", "dataset", "metric_label", "model"]
    raw = bl[bl["variant"] == "raw"].rename(columns={"best_value": "raw_best",
                                                     "best_layer": "raw_layer"})
    anyv = bl.sort_values(key + ["best_value"], ascending=[True] * 4 + [False])
    anyv = anyv.drop_duplicates(key, keep="first").rename(columns={
        "best_value": "best_any", "variant": "variant_any", "best_layer": "layer_any"})
    out = anyv[key + ["family", "n_layers", "best_any", "variant_any", "layer_any"]].merge(
        raw[key + ["raw_best", "raw_layer"]], on=key, how="left")
    out = out.rename(columns={"metric_label": "metric"})
    out["_t"] = out["task"].map(lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else 99)
    out["_f"] = out["family"].map(family_order)
    out = out.sort_values(["_t", "task", "dataset", "metric", "_f", "model"])
    return out[cols].reset_index(drop=True)
