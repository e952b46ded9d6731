"""The built-in analyses, declared for the registry (:mod:`patchlens.analysis.registry`): attention
statistics with the offset-head thresholds, linear CKA between layers and models, and high-norm
token statistics. The protocols are in the modules named here and in ``docs/protocols.md``.
"""
from __future__ import annotations

from patchlens.analysis import attention_stats, cka, offset_heads, token_norms
from patchlens.analysis.registry import AnalysisSpec, register_analysis
from patchlens.models.layers import check_layers
from patchlens.params import expect_int, expect_splits


def _protocol(settings: dict, defaults) -> dict:
    return {k: settings[k] for k in defaults}


def check_attention(p: dict) -> dict:
    """``analyses.attention.params``: the statistics' own parameters, the offset-head thresholds
    and which images (``split``, ``max_images``; ``seed`` of the stratified sample)."""
    attention_stats.check_params(_protocol(p, attention_stats.DEFAULT_PARAMS))
    offset_heads.check_params(p["offset_heads"])
    expect_splits(p["split"], "analyses.attention.params.split")
    expect_int(p["max_images"], "analyses.attention.params.max_images", 1)
    expect_int(p["seed"], "analyses.attention.params.seed", 0)
    return p


def attention_layers(p: dict, key: str, facts: dict) -> None:
    """``layers``: blocks of every analysed model (``0 .. n_blocks-1``)."""
    if p.get("layers") is not None:
        check_layers(p["layers"], facts["n_blocks"], "analyses.attention.params.layers",
                     negative=False, model=key)


def check_cka(p: dict) -> dict:
    cka.check_params(_protocol(p, cka.DEFAULT_PARAMS))
    expect_splits(p["split"], "analyses.cka.params.split")
    return p


def check_token_norms(p: dict) -> dict:
    token_norms.check_params(_protocol(p, token_norms.DEFAULT_PARAMS))
    expect_splits(p["split"], "analyses.token_norms.params.split")
    return p


ATTENTION = register_analysis(AnalysisSpec(
    name="attention", title="Attention",
    defaults={**attention_stats.DEFAULT_PARAMS, "offset_heads": {}},
    sampling={"split": None, "max_images": 64, "seed": 0}, check_params=check_attention,
    outputs="attention/{model}/{dataset}.h5",
    tables=("attention.parquet", "offset_heads.csv", "offset_maps.parquet"), reads="images",
    timm_only=True, check_model=attention_layers, order=10,
    figures=("attention_distance", "attention_offset", "attention_stats", "offset_heads")))

CKA = register_analysis(AnalysisSpec(
    name="cka", title="Representation similarity (CKA)", defaults=cka.DEFAULT_PARAMS,
    sampling={"split": None}, check_params=check_cka, outputs="cka/{dataset}.parquet",
    tables=("cka.parquet",), reads="features", order=20,
    figures=("cka_patch", "cka_image", "cka_tokens_ln")))

TOKEN_NORMS = register_analysis(AnalysisSpec(
    name="token_norms", title="High-norm tokens", defaults=token_norms.DEFAULT_PARAMS,
    sampling={"split": None}, check_params=check_token_norms,
    outputs="token_norms/{model}/{dataset}.parquet", tables=("token_norms.parquet",),
    reads="features", order=30, figures=("token_norms",)))
