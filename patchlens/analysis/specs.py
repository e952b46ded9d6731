"""The built-in analyses, declared for the registry (:mod:`patchlens.analysis.registry`): attention
statistics with the offset-head thresholds, linear CKA between layers and models, and high-norm
token statistics. The protocols are in the modules named here and in ``docs/protocols.md``.
"""
from __future__ import annotations

from patchlens.analysis import attention_stats, cka, offset_heads, token_norms
from patchlens.analysis.registry import AnalysisSpec, Table, register_analysis
from patchlens.models.flops import vit_flop, vit_mparams
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


def attention_cost(p: dict, counts: dict, models: list) -> dict:
    """One job (model, data set): a forward pass per sampled image plus the statistics of each
    block's (N, N) attention maps; writes per-block (N, N) offset accumulators."""
    f = models[0]
    grid = f["grid"]
    n = min(sum(counts.values()), p["max_images"] or 10 ** 9)
    N = grid[0] * grid[1] + f["prefix"]
    return {"flop": n * vit_flop(f, grid) + n * f["depth"] * N * N * 4.0,
            "written": f["depth"] * N * N * 8.0, "mparams": vit_mparams(f)}


def cka_cost(p: dict, counts: dict, models: list) -> dict:
    """One job per data set (minibatch HSIC, :mod:`patchlens.analysis.cka`): one (b, b) Gram
    per model layer and batch, then every pair of layers; reads every model's feature file."""
    n = sum(counts.values())
    samples = n * (p["max_patches_per_image"] + 1)
    flop, read = 0.0, 0.0
    for f in models:
        read += f["feature_bytes"]
        flop += 2.0 * samples * p["batch_size"] * f["dim"] * f["n_layers"]
    L = sum(f["n_layers"] for f in models)
    flop += 2.0 * samples * p["batch_size"] * L * L
    return {"flop": flop, "read": read}


ATTENTION = register_analysis(AnalysisSpec(
    name="attention", title="Attention",
    defaults={**attention_stats.DEFAULT_PARAMS, "offset_heads": {}},
    sampling={"split": None, "max_images": 64, "seed": 0}, check_params=check_attention,
    outputs="attention/{model}/{dataset}.h5",
    tables=(Table("attention", "attention.parquet",
                  ("model", "dataset", "layer", "head", "metric", "value")),
            Table("offset_heads", "offset_heads.csv",
                  ("model", "layer", "head", "direction", "dy", "dx", "strength", "flagged")),
            Table("offset_maps", "offset_maps.parquet",
                  ("model", "layer", "head", "dy", "dx", "value"))),
    reads="images", timm_only=True, check_model=attention_layers, flop=attention_cost,
    rule="attention_stats", order=10,
    figures=("attention_distance", "attention_offset", "attention_stats", "offset_heads")))

CKA = register_analysis(AnalysisSpec(
    name="cka", title="Representation similarity (CKA)", defaults=cka.DEFAULT_PARAMS,
    sampling={"split": None}, check_params=check_cka, outputs="cka/{dataset}.parquet",
    tables=(Table("cka", "cka.parquet",
                  ("model_a", "model_b", "layer_a", "layer_b", "level", "value")),),
    reads="features", flop=cka_cost, threads=2, order=20,
    figures=("cka_patch", "cka_image", "cka_tokens_ln")))

TOKEN_NORMS = register_analysis(AnalysisSpec(
    name="token_norms", title="High-norm tokens", defaults=token_norms.DEFAULT_PARAMS,
    sampling={"split": None}, check_params=check_token_norms,
    outputs="token_norms/{model}/{dataset}.parquet",
    tables=(Table("token_norms", "token_norms.parquet"),),  # optional: the statistics tables
    reads="features", order=30, figures=("token_norms",)))
