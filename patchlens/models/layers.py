"""Which blocks of a model a config selects: the one home of the layer-index rules.

``layers`` in ``models.<m>.layers`` (and ``analyses.attention.params.layers``) is ``all`` or a
list of block indices; negative indices count from the end as in Python, but an index outside
``-n_blocks .. n_blocks-1`` is a ConfigError naming the key, never wrapped around. The dry run
checks them against every model's depth (:mod:`patchlens.startup`), extraction applies them
(:func:`select_layers`).
"""
from __future__ import annotations

import numbers

from patchlens.errors import ConfigError


def check_layers(layers, n_blocks: int, where: str, negative: bool = True,
                 model: str | None = None) -> None:
    """``all``/None or block indices in ``-n_blocks .. n_blocks-1`` (``0 .. n_blocks-1`` when
    ``negative`` is False)."""
    if layers in (None, "all"):
        return
    lo = -n_blocks if negative else 0
    bad = [i for i in layers
           if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not lo <= i < n_blocks]
    if bad or not list(layers):
        whose = f"model {model!r}" if model else "the model"
        raise ConfigError(f"{where} = {list(layers)!r}: {whose} has {n_blocks} blocks; expected "
                          f"block indices in {lo}..{n_blocks - 1}")


def select_layers(layers, n_blocks: int, where: str = "layers") -> list[int]:
    """``all`` or a list of block indices (negative counts from the end) -> sorted indices.

    Indices outside ``-n_blocks .. n_blocks-1`` are a ConfigError naming ``where`` (the config
    key), never wrapped around (:func:`check_layers`, run by the dry run too)."""
    if layers in (None, "all"):
        return list(range(n_blocks))
    check_layers(layers, n_blocks, where)
    return sorted({int(i) % n_blocks for i in layers})
