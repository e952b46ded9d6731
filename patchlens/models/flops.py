"""A ViT's forward FLOPs and weight count from its facts (:func:`patchlens.plan.facts.model_facts`:
``dim``, ``depth``, ``mlp_hidden``, ``patch_size``, ``prefix``), for the resource plan and the
cost models the tasks and analyses declare. Counts a multiply-add as two FLOPs."""
from __future__ import annotations


def vit_flop(f: dict, grid: tuple[int, int]) -> float:
    """Forward FLOPs of one image: patch embedding + per block qkv, proj, MLP, attention."""
    if not f["depth"]:
        return 0.0
    P = grid[0] * grid[1]
    N, D, H, p = P + f["prefix"], f["dim"], f["mlp_hidden"], f["patch_size"]
    block = 2 * N * D * 3 * D + 2 * N * D * D + 2 * 2 * N * D * H + 2 * 2 * N * N * D
    return 2.0 * P * 3 * p * p * D + f["depth"] * block


def vit_mparams(f: dict) -> float:
    """Millions of weights of the blocks and patch embedding (what building the model inits)."""
    D, H, p = f["dim"], f["mlp_hidden"], f["patch_size"]
    return (f["depth"] * (4 * D * D + 2 * D * H) + 3 * p * p * D) / 1e6
