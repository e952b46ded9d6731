"""The report: one self-contained ``results/report/index.html``.

Everything is inside the file: figures as base64 PNG (the PNGs that :mod:`figures` wrote), CSS
inline, no script, no external font, stylesheet or image, so the page opens offline and can be
mailed or archived as one file. Sections: overview (best layer per model and task), one per task
(its figures and the best score per model and metric), high-variance dimensions, attention, CKA,
then the configuration (YAML) and provenance (package version, model sources and weight
checksums, data set checksums). Sections without figures or rows are left out. Written
atomically; the same inputs give the same bytes (no timestamp unless the provenance has one).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from patchlens import __version__
from patchlens.analysis.registry import all_analyses
from patchlens.io import atomic_path
from patchlens.report import tables as T
from patchlens.report import models as RM
from patchlens.report.figures import FIGURES, panel_key, metric_title
from patchlens.report.style import model_order
from patchlens.stats.paired import verdict
from patchlens.report.statistics import load_tables as stats_tables
from patchlens.tasks.registry import all_tasks, lower_is_better

# shown size / PNG size: a double-column figure (1380 px at 200 dpi) shows 966 px wide
SCREEN_SCALE = 0.7

# (anchor, title, figures, task whose summary table goes under the figures); one section per
# registered task and per registered analysis (title and report figures:
# patchlens.tasks.registry, patchlens.analysis.registry), in registry order
SECTIONS = [
    ("overview", "Overview: best layer", ["best_layer"], None),
    ("patches", "See the patches", ["patch_pca"], None),
    *[(s.name, s.title, list(s.figures), s.name) for s in all_tasks()],
    ("variance", "High-variance dimensions", ["drop_sweep", "variance_spectra"], None),
    *[(s.name, s.title, list(s.figures), None) for s in all_analyses()],
    ("paired", "Paired model comparisons", [], None),
]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
 background:#fafafa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem 3rem;background:#fff}
h1{font-size:1.6rem;margin:.6rem 0}h2{font-size:1.25rem;border-bottom:1px solid #ddd;
 padding-bottom:.2rem;margin-top:2.2rem}h3{font-size:1.05rem}
nav{font-size:.9rem;margin:.5rem 0 1rem;display:flex;flex-wrap:wrap;gap:.2rem 1rem}
nav a{white-space:nowrap}
figure{margin:1rem 0 1.5rem}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88rem;color:#444;max-width:760px}
table{border-collapse:collapse;font-size:.82rem;margin:.5rem 0 1rem}
th,td{border:1px solid #ddd;padding:.2rem .45rem;vertical-align:top}
th{background:#f1f1f1}th,td{text-align:left}td.n,th.n{text-align:right}
td.best{font-weight:bold}
span.alt{color:#666;font-size:.75rem;display:block}
pre{background:#f6f6f6;padding:.7rem;overflow:auto;font-size:.8rem;border:1px solid #e3e3e3}
details{margin:.5rem 0}summary{cursor:pointer;color:#0b5394}
.swatch{display:inline-block;width:.7rem;height:.7rem;border-radius:2px;margin-right:.3rem;
 vertical-align:middle}
p.note{font-size:.85rem;color:#555}
"""


# -------------------------------------------------------------------------------- html pieces
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}f}"
    return str(x)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def html_table(header: list[str], rows: list[list]) -> str:
    """A table; numbers are formatted and right-aligned, text left-aligned and escaped. A cell
    may also be a (html, css class) pair built by this module (class ``n`` right-aligns)."""
    first = rows[0] if rows else []
    kinds = ["n" if i < len(first) and (_is_number(first[i]) or (
        isinstance(first[i], tuple) and "n" in first[i][1].split())) else "" for i in
        range(len(header))]
    out = ["<table><thead><tr>"]
    out += [f'<th class="{k}">{_e(h)}</th>' if k else f"<th>{_e(h)}</th>"
            for h, k in zip(header, kinds)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>")
        for c in r:
            if isinstance(c, tuple):
                body, klass = c
            else:
                body, klass = _e(_fmt(c)), "n" if _is_number(c) else ""
            out.append(f'<td class="{klass}">{body}</td>' if klass else f"<td>{body}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def frame_table(df: pd.DataFrame) -> str:
    rows = [[v.item() if isinstance(v, np.generic) else v for v in r]
            for r in df.itertuples(index=False)]
    return html_table([str(c) for c in df.columns], rows)


def figure_html(name: str, png: Path) -> str:
    """<figure> with the PNG inline (base64) at its paper size, and the catalogue caption."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    width = _png_width(png)
    w = f' width="{round(width * SCREEN_SCALE)}"' if width else ""
    caption = FIGURES[name].caption
    return (f'<figure id="fig-{_e(name)}"><img src="data:image/png;base64,{data}"{w} '
            f'alt="{_e(name)}"><figcaption><b>{_e(name)}.</b> {_e(caption)}</figcaption>'
            "</figure>")


def _png_width(png: Path) -> int | None:
    head = png.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big")


# -------------------------------------------------------------------------------- table views
def score_summary_html(summary: pd.DataFrame, task: str, families: dict,
                       labels: dict | None = None) -> str:
    """Rows (data set, metric) x columns models (headed by their config ``label``): best raw
    score and its layer; a better variant (e.g. drop{m}, chosen on the evaluation split) is added
    below; the best raw model of a row is bold."""
    d = summary[summary["task"] == task]
    if not len(d):
        return ""
    models = model_order({m: families.get(m, T.DEFAULT_FAMILY) for m in d["model"].unique()})
    rows = []
    keys = sorted(set(zip(d["dataset"], d["metric"])), key=lambda k: (k[0], panel_key(k[1])))
    for ds, metric in keys:
        g = d[(d["dataset"] == ds) & (d["metric"] == metric)]
        g = g.set_index("model")
        top = g["raw_best"].max()
        row = [ds, metric_title(metric)]
        for m in models:
            if m not in g.index:
                row.append("–")
                continue
            r = g.loc[m]
            body = (f"{_fmt(r['raw_best'])} <small>L{_layer(r['raw_layer'], r['n_layers'])}"
                    "</small>") if pd.notna(r["raw_best"]) else "–"
            if r["variant_any"] != "raw" and (pd.isna(r["raw_best"])
                                             or r["best_any"] > r["raw_best"]):
                body += (f'<span class="alt">{_e(r["variant_any"])}: {_fmt(r["best_any"])} '
                         f"L{_layer(r['layer_any'], r['n_layers'])}</span>")
            row.append((body, "n best" if pd.notna(r["raw_best"]) and r["raw_best"] == top
                        else "n"))
        rows.append(row)
    note = ('<p class="note">Best score over layers of the raw features (L = block index, '
            "L out = after the final norm; seed mean); a variant that scores higher is shown "
            "below it (variant and layer chosen on the evaluation split: optimistic).</p>")
    labels = labels or {}
    return note + html_table(["data set", "metric"] + [labels.get(m, m) for m in models], rows)


def _layer(layer, n_blocks) -> str:
    """Block index, or 'out' for the final-norm entry (layer == n_blocks)."""
    return "out" if int(layer) == int(n_blocks) else str(int(layer))


def best_layer_html(best: pd.DataFrame, labels: dict | None = None) -> str:
    """The best-layer table (``tables/best_layer.csv``, raw features) with model labels."""
    if not len(best):
        return ""
    d = best[best["variant"] == "raw"] if (best["variant"] == "raw").any() else best
    d = d.assign(_t=d["task"].map(lambda t: T.TASK_ORDER.index(t) if t in T.TASK_ORDER else 99))
    d = d.sort_values(["_t", "dataset", "metric", "model"])
    labels = labels or {}
    # the task keys that tell rows apart (low-shot feature and shots)
    keys = [c for c in ("feature", "shots", "head")
            if c in d and (~d[c].astype(str).isin(["", "-1", "nan"])).any()]
    d = d.assign(model=d["model"].map(lambda m: labels.get(m, m)),
                 best_layer=[_layer(a, b) for a, b in zip(d["best_layer"], d["n_layers"])])
    cols = ["task", "dataset", "metric"] + keys + ["model", "variant", "best_layer",
                                                     "last_layer", "n_layers", "best_value",
                                                     "last_value", "gap", "n_seeds"]
    return (f"<details><summary>Best layer per model, task and metric ({len(d)} rows, "
            f"{'raw features' if (d['variant'] == 'raw').all() else 'all variants'})"
            f"</summary>{frame_table(d[cols])}</details>")


def paired_html(paired: pd.DataFrame | None) -> str:
    """Paired bootstrap comparisons at the best layer (raw features where present): difference,
    interval, p-value, and "a > b" only where the interval excludes 0."""
    if paired is None or not len(paired):
        return ""
    d = paired[paired["layer_choice"] == "best"]
    if (d["variant"] == "raw").any():
        d = d[d["variant"] == "raw"]
    d = d.assign(_t=d["task"].map(lambda t: T.TASK_ORDER.index(t) if t in T.TASK_ORDER else 99))
    d = d.sort_values(["_t", "dataset", "metric", "model_a", "model_b"])
    keys = [c for c in ("scale_bin", "shots", "feature") if c in d
            and d[c].astype(str).replace({"-1": "", "nan": ""}).ne("").any()]
    rows, lower = [], lower_is_better()
    for _, r in d.iterrows():
        extra = [("" if str(r[c]) in ("-1", "nan") else r[c]) for c in keys]
        rows.append([r["task"], r["dataset"], metric_title(str(r["metric"])), *extra,
                     f"{r['model_a']} (L{int(r['layer_a'])})",
                     f"{r['model_b']} (L{int(r['layer_b'])})", (_fmt(r["diff"]), "n"),
                     (f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", "n"),
                     (_fmt(r["p_value"]), "n"), verdict(r, lower)])
    note = ('<p class="note">Each pair of models at its own best layer: difference a − b of the '
            "score, 95% bias-corrected percentile interval and two-sided p-value of a paired bootstrap over the "
            "same units (and support seeds), see docs/protocols.md#resampling-units. \u201ca &gt; b\u201d only "
            "where the interval excludes 0. Comparisons at the last block: "
            "<code>results/tables/paired.csv</code>.</p>")
    return note + html_table(["task", "data set", "metric", *keys, "a", "b", "diff", "95% CI",
                              "p", "verdict"], rows)


def offset_heads_html(heads: pd.DataFrame) -> str:
    if not len(heads):
        return ""
    f = heads[T.flag_mask(heads["flagged"])].sort_values(["model", "layer", "head"])
    if not len(f):
        return '<p class="note">No head passed the offset-head thresholds.</p>'
    cols = ["model", "layer", "head", "direction", "dy", "dx", "strength"]
    return (f"<h3>Offset local heads ({len(f)} flagged of {len(heads)} heads)</h3>"
            + frame_table(f[cols]))


def _value_html(v) -> str:
    if isinstance(v, (dict, list)):
        return f"<code>{_e(json.dumps(v, sort_keys=True, default=str))}</code>"
    return _e(_fmt(v))


def _title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def provenance_html(provenance: dict, models: pd.DataFrame) -> str:
    """Package version; the model list (models.csv); one table per mapping of mappings of the
    provenance (:func:`patchlens.report.provenance.collect_provenance`: the feature files with
    their model source and weights checksum, the data sets with their manifest checksum);
    remaining keys as item / value rows."""
    prov = dict(provenance or {})
    version = str(prov.pop("patchlens_version", __version__))
    out = [html_table(["item", "value"], [["patchlens version", version]])]
    if len(models):
        mt = models[T.TABLE_COLUMNS["models"]].copy()
        fam = dict(zip(mt["model"], mt["family"].fillna(T.DEFAULT_FAMILY)))
        mt = mt.set_index("model").loc[model_order(fam)].reset_index()
        mt = mt.astype(object).where(mt.notna(), "")
        out.append("<h3>Models</h3>" + frame_table(mt))
    scalars = []
    for key, val in prov.items():
        if isinstance(val, dict) and val and all(isinstance(v, dict) for v in val.values()):
            cols = sorted({c for v in val.values() for c in v})
            rows = [[k] + [(_value_html(v.get(c, "")), "") for c in cols]
                    for k, v in val.items()]
            out.append(f"<h3>{_e(_title(key))}</h3>" + html_table(["name"] + cols, rows))
        else:
            scalars.append([key, (_value_html(val), "")])
    if scalars:
        out.append("<h3>Other</h3>" + html_table(["item", "value"], scalars))
    return "".join(out)


# ------------------------------------------------------------------------------------- report
def build_html(tables: dict, figures_dir, config: dict, provenance: dict,
               title: str = "patchlens report") -> str:
    """The page as a string (see :func:`write_report`)."""
    figures_dir = Path(figures_dir)
    families = RM.model_families(tables)
    labels = RM.model_labels(tables)
    summary = T.summary_table(tables.get("scores"))
    sections, nav = [], []
    for anchor, heading, figs, task in SECTIONS:
        body = [figure_html(n, figures_dir / f"{n}.png") for n in figs
                if (figures_dir / f"{n}.png").exists()]
        if task:
            body.append(score_summary_html(summary, task, families, labels))
        if anchor == "overview":
            body.append(best_layer_html(tables.get("best_layer", T.empty_table("best_layer")),
                                        labels))
        if anchor == "paired":
            body.append(paired_html(tables.get("paired")))
        if anchor == "patches" and ((config or {}).get("report") or {}).get("explorer"):
            body.append('<p class="note"><a href="explorer.html">Open the patch explorer</a>: '
                        "click a patch to see its cosine similarity to every patch of the shown "
                        "images, per model, variant and layer (rule explorer).</p>")
        if "offset_heads" in figs:  # the flagged heads' table under their figure
            body.append(offset_heads_html(tables.get("offset_heads",
                                                     T.empty_table("offset_heads"))))
        body = [b for b in body if b]
        if body:
            sections.append(f'<section id="{anchor}"><h2>{_e(heading)}</h2>{"".join(body)}'
                            "</section>")
            nav.append(f'<a href="#{anchor}">{_e(heading)}</a>')
    cfg = yaml.safe_dump(config or {}, sort_keys=False, default_flow_style=False,
                         allow_unicode=True)
    sections.append(f'<section id="config"><h2>Configuration</h2><pre>{_e(cfg)}</pre></section>')
    sections.append(f'<section id="provenance"><h2>Provenance</h2>'
                    f'{provenance_html(provenance, tables.get("models", T.empty_table("models")))}'
                    "</section>")
    nav += ['<a href="#config">Configuration</a>', '<a href="#provenance">Provenance</a>']
    n_models = len(families)
    intro = (f'<p class="note">{n_models} model{"s" * (n_models != 1)}; every figure is drawn '
             "from the tables in <code>results/tables/</code>. Layer axes: block index, or "
             "relative depth (block + 1) / blocks where models of different depth share a "
             "panel.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1>{intro}<nav>{''.join(nav)}</nav>{''.join(sections)}"
            "</main></body></html>\n")


def write_report(tables_dir, figures_dir, out_html, config: dict, provenance: dict) -> Path:
    """Write the self-contained report page ``out_html`` (atomically) from the tables in
    ``tables_dir`` and the figures :func:`patchlens.report.figures.make_figures` drew into
    ``figures_dir``; ``config`` is shown as YAML, ``provenance`` (patchlens_version, models:
    {key: {source, sha256}}, datasets: {name: {sha256}}, ...) as tables."""
    page = build_html({**T.load_tables(tables_dir), **stats_tables(tables_dir)}, figures_dir,
                      config, provenance)
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_html
