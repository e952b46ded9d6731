"""The analyses' job rows: each analysis's own cost model (``AnalysisSpec.flop`` in
:mod:`patchlens.analysis.specs`, as ``TaskSpec.flop`` for tasks), called once per job with the
job's models' facts; an analysis without one adds no row (a negligible cost)."""
from __future__ import annotations

from patchlens.analysis.registry import all_analyses
from patchlens.config import analysis_models, analysis_params, model_datasets
from patchlens.plan.rows import ROW_COSTS

_COSTS = {"flop", "written", "read", "mem", *ROW_COSTS}


def analysis_rows(st) -> None:
    """The rows of every configured analysis that declares a cost: one per (model, data set)
    or, for an analysis with one job per data set, one per data set (model ``all``)."""
    config = st.config
    analyses = config.get("analyses") or {}
    for spec in all_analyses():
        if spec.flop is None or spec.name not in analyses:
            continue
        p = analysis_params(config, spec.name)
        for d in analyses[spec.name]["datasets"]:
            models = [m for m in analysis_models(config, spec.name, timm_only=spec.timm_only)
                      if d in model_datasets(config, m)]
            for group in ([m] for m in models) if spec.per_model else [models]:
                facts = [{**st.facts[m], "grid": st.grid(m, d),
                          "feature_bytes": st.feats.get((m, d), 0.0)} for m in group]
                cost = spec.flop(p, st.counts[d], facts)
                unknown = set(cost) - _COSTS
                if unknown:
                    raise ValueError(f"analysis {spec.name!r}: flop() returned unknown cost(s) "
                                     f"{sorted(unknown)}")
                st.add(spec.job_rule, group[0] if spec.per_model else "all", d, spec.name,
                       **cost)
