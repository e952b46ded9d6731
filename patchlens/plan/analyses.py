"""The analyses' job rows (attention statistics, CKA). Kept here until the analyses declare
their own cost (an ``AnalysisSpec`` with a cost function, as ``TaskSpec.flop`` does for tasks);
``token_norms`` is not costed (a pass over the class-token norms, negligible)."""
from __future__ import annotations

from patchlens.config import analysis_models, analysis_params, model_datasets
from patchlens.plan.facts import vit_flop, vit_mparams


def attention_rows(st, ap: dict, datasets) -> None:
    """A forward pass per image plus the attention maps' statistics, per block."""
    config = st.config
    for d in datasets:
        for m in analysis_models(config, "attention"):
            if d not in model_datasets(config, m):
                continue
            f, grid = st.facts[m], st.grid(m, d)
            n = min(sum(st.counts[d].values()), ap["max_images"] or 10 ** 9)
            N = grid[0] * grid[1] + f["prefix"]
            st.add("attention_stats", m, d, "attention", flop=n * vit_flop(f, grid)
                   + n * f["depth"] * N * N * 4.0,
                   written=f["depth"] * N * N * 8.0, mparams=vit_mparams(f))


def cka_rows(st, cp: dict, datasets) -> None:
    """Minibatch HSIC: one (b, b) Gram per model layer and batch, then every pair of layers."""
    config = st.config
    for d in datasets:
        models = [m for m in analysis_models(config, "cka", timm_only=False)
                  if d in model_datasets(config, m)]
        n = sum(st.counts[d].values())
        samples = n * (cp["max_patches_per_image"] + 1)
        flop, read = 0.0, 0.0
        for m in models:
            f = st.facts[m]
            read += st.feats.get((m, d), 0.0)
            flop += 2.0 * samples * cp["batch_size"] * f["dim"] * f["n_layers"]
        L = sum(st.facts[m]["n_layers"] for m in models)
        flop += 2.0 * samples * cp["batch_size"] * L * L
        st.add("cka", "all", d, "cka", flop=flop, read=read)


ANALYSIS_ROWS = {"attention": attention_rows, "cka": cka_rows}


def analysis_rows(st) -> None:
    """The rows of every configured analysis that has a cost here."""
    analyses = st.config.get("analyses") or {}
    for name, rows in ANALYSIS_ROWS.items():
        if name in analyses:
            rows(st, analysis_params(st.config, name), analyses[name]["datasets"])
