"""The patch explorer page ``results/report/explorer.html``: one self-contained file (images as
inline JPEG, the compressed features as inline JSON, the script and style inline; no network,
opens from ``file://``). The data come from :mod:`patchlens.report.explorer`; the script is
``templates/explorer.js`` (plain DOM and canvas 2D). Written atomically.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from patchlens.data.dataset import Dataset
from patchlens.io import atomic_path, write_json
from patchlens.report.explorer import image_uri, model_payload
from patchlens.report.patch_pca import image_sets, shown_images

TEMPLATES = Path(__file__).resolve().parent / "templates"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
 background:#fafafa}main{padding:.6rem 1.2rem 2rem}h1{font-size:1.35rem;margin:.3rem 0}
.controls{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;font-size:.9rem;
 margin:.4rem 0 .6rem}.panels{display:flex;flex-wrap:wrap;gap:1.2rem}
.panel{flex:1 1 560px;background:#fff;border:1px solid #ddd;padding:.5rem}
.panel header{display:flex;gap:.8rem;align-items:center;flex-wrap:wrap;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.35rem;margin-top:.4rem}
figure.card{margin:0}figure.card canvas{display:block;cursor:crosshair;width:140px}
figcaption{font-size:.7rem;color:#666;max-width:140px;overflow:hidden;white-space:nowrap}
select.model{max-width:17em}
p.info{font-size:.8rem;color:#444;min-height:1.1rem;margin:.3rem 0}
p.note{font-size:.82rem;color:#555;max-width:1100px}
"""


def _panel(i: int) -> str:
    which = "Model" if i == 0 else "Second model"
    return (f'<section class="panel" id="panel{i}"><header><label>{which} '
            '<select class="model"></select></label><label>Layer <input type="range" '
            'class="layer" min="0" max="0" value="0"></label><b class="layer-name"></b>'
            '</header><p class="info"></p><div class="cards"></div></section>')


def notes_html(stats: dict) -> str:
    """The notes under the controls: what the views mean and the compression error."""
    per_model = "; ".join(f"{html.escape(m)} {e:.4f}" for m, e in stats["error_by_model"].items())
    return (
        '<p class="note">Click a patch (or tick <i>follow mouse</i>): every image shows the '
        "cosine similarity of that patch's features to each of its patches (viridis, scaled to "
        "the range of this click over the shown images), the patch itself outlined red and the "
        "most similar other patches white. The second model answers the same position. "
        "<i>PCA</i> colours each patch by its first three principal components (fitted jointly "
        "on the shown images of this model, variant and layer). Variants: raw, zscore and "
        "drop<i>m</i> use the channel statistics of the support split (variance files).</p>"
        f'<p class="note" id="compression">Features are compressed to at most {stats["dims"]} '
        "principal components per layer and variant (plus one coordinate for the mean), the "
        "first 16 stored as int8 and the others as 4-bit codes, one scale per coordinate. "
        "Largest absolute error of a cosine similarity "
        "against the stored float16 features, over every pair of shown patches: "
        f'<b id="max-error">{stats["max_error"]:.4f}</b> (per model: {per_model}); the mean '
        "absolute error over those pairs, averaged over models, variants and layers: "
        f'<span id="mean-error">{stats["mean_error"]:.4f}</span>.</p>')


def build_page(payload: dict, stats: dict, title: str = "patchlens patch explorer") -> str:
    data = json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c")
    script = (TEMPLATES / "explorer.js").read_text(encoding="utf-8")
    controls = (
        '<div class="controls"><label>Data set / image set <select id="dataset"></select>'
        "</label>"
        '<label>Variant <select id="variant"></select></label>'
        '<label>View <select id="view"><option value="sim">similarity</option>'
        '<option value="pca">PCA</option></select></label>'
        f'<label>Most similar <input id="topk" type="number" min="0" max="50" '
        f'value="{int(payload["top_k"])}" style="width:3.5em"></label>'
        '<label><input id="follow" type="checkbox"> follow mouse</label>'
        '<label>Opacity <input id="opacity" type="range" min="0" max="1" step="0.05" '
        'value="0.65"></label></div>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
            f'<h1>{html.escape(title)}</h1><p class="note"><a href="index.html">back to the '
            f"report</a></p>{controls}{notes_html(stats)}"
            f'<div class="panels">{_panel(0)}{_panel(1)}</div></main>'
            f'<script id="explorer-data" type="application/json">{data}</script>'
            f"<script>{script}</script></body></html>\n")


def explorer_data(entries: dict, settings: dict, labels: dict) -> tuple[dict, dict]:
    """Payload and statistics of the page. ``entries``: {dataset: {"manifest": path, "models":
    {model: (feature file, variance file or None)}}}; ``settings``:
    :func:`patchlens.report.patch_pca.explorer_settings`; ``labels``: {model: label}."""
    payload = {"top_k": settings["top_k"], "dims": settings["dims"],
               "variants": settings["variants"], "datasets": {}}
    errors: dict[str, float] = {}
    means: list[float] = []
    for name, entry in entries.items():
        ds = Dataset.from_manifest(entry["manifest"])
        for set_name, chosen in image_sets(settings["images"]).items():
            images = shown_images(ds.images, chosen)
            models, size = {}, None
            for m, (feat, var) in entry["models"].items():
                models[m], err = model_payload(feat, var, images, settings["variants"],
                                               settings["layers"], settings["dims"],
                                               labels.get(m, m))
                size = size or models[m]["input_size"]
                worst = max((e[0] for es in err.values() for e in es), default=0.0)
                errors[m] = max(errors.get(m, 0.0), worst)
                means += [e[1] for es in err.values() for e in es]
            key = f"{name}: {set_name}" if set_name else name
            payload["datasets"][key] = {
                "images": [{"id": i, "src": image_uri(ds, i, tuple(size))} for i in images],
                "models": models}
    stats = {"dims": settings["dims"], "max_error": max(errors.values(), default=0.0),
             "mean_error": float(sum(means) / max(1, len(means))), "error_by_model": errors}
    return payload, stats


def write_explorer(entries: dict, settings: dict, labels: dict, out_html, out_stats=None
                   ) -> dict:
    """Write the page (and, when given, its statistics as JSON: dims, max_error, mean_error,
    error_by_model, bytes); returns the statistics."""
    payload, stats = explorer_data(entries, settings, labels)
    page = build_page(payload, stats)
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    stats["bytes"] = out_html.stat().st_size
    if out_stats:
        write_json(stats, out_stats)
    return stats


def explorer_entries(pairs: list, features: list, variances: list, manifests: list) -> dict:
    """The ``entries`` of :func:`write_explorer` from the rule's inputs: ``pairs`` [[dataset,
    model], ...] in the order of ``features``; ``variances`` in the same order (empty when no
    variant needs channel statistics); ``manifests`` in data set order of first appearance."""
    order = list(dict.fromkeys(d for d, _ in pairs))
    entries = {d: {"manifest": str(mf), "models": {}} for d, mf in zip(order, manifests)}
    for i, (d, m) in enumerate(pairs):
        entries[d]["models"][m] = (str(features[i]), str(variances[i]) if variances else None)
    return entries
