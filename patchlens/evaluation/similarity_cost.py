"""What a cosine top-k search over every channel variant costs, as the shared similarity code
computes it (docs/protocols.md, "Feature variants"; issue 20, item 1): per (layer, query chunk)
one raw product ``Q S^T``, one more for ``zscore`` (per-channel weights), and every ``drop{m}``
derived from the raw product by a rank-m correction, ``q'.s' = q.s - q_D.s_D`` and
``|q'|^2 = |q|^2 - |q_D|^2`` (D = the m dropped channels); then, per variant, the normalisation
applied to the product (divide by the norms) and the top-k.

The resource plan (:mod:`patchlens.plan`) times the three parts at their own rates:
``sim_flop`` (the products: a BLAS matmul on the CPU, float16 tensor cores with float32
accumulation on a GPU), ``select`` (similarity values visited per variant: the rank-m
correction, the normalisation and the top-k of each value, memory-bound; the corrections'
2 m FLOPs per value are timed here, not counted as matmul FLOPs).
"""
from __future__ import annotations

from patchlens.features.variants import parse_variant


def similarity_cost(n_query: float, n_support: float, channels: int, variants,
                    shared: bool = True, tensor_cores: bool = True) -> dict:
    """``flop`` (= ``sim_flop``, the products) and ``select`` (values visited) of the top-k of
    ``n_query`` vectors against ``n_support`` (every pair compared) for every one of
    ``variants``. ``shared=False``: each variant searched on its own (one product each);
    ``tensor_cores=False``: no ``sim_flop`` (the products as plain float32 FLOPs on a GPU)."""
    kinds = [parse_variant(v)[0] for v in variants]
    if shared:
        products = int("zscore" in kinds) + int(any(k != "zscore" for k in kinds))
    else:
        products = len(kinds)
    sim = products * 2.0 * channels * float(n_query) * float(n_support)
    return {"flop": sim, "sim_flop": sim * bool(tensor_cores),
            "select": len(kinds) * float(n_query) * float(n_support)}
