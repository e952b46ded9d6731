"""Feature variants evaluated by every task: ``raw``, ``drop{m}`` and ``zscore``.

Vanyan et al. (2024, arXiv 2401.00463, Sec. 5) find that MAE-style patch embeddings carry a few
channels of very high variance that dominate cosine/Euclidean k-NN; removing the ``m`` channels of
largest variance (measured on the support split, per layer) recovers much of the gap. ``zscore``
standardises every channel with the same statistics.
"""
from __future__ import annotations

import re

import numpy as np

from patchlens.errors import ConfigError

# The variant grammar, the one definition: the schema's pattern (``$defs/variant``), the rules'
# wildcard constraint and parse_variant all read it (tests/unit/test_analysis_registry.py checks
# the schema's copy).
VARIANT_PATTERN = r"raw|zscore|drop[0-9]+"
_VARIANT = re.compile(rf"^(?:{VARIANT_PATTERN})$")


def parse_variant(variant: str) -> tuple[str, int]:
    """'raw' -> ('raw', 0); 'drop4' -> ('drop', 4); 'zscore' -> ('zscore', 0)."""
    if not isinstance(variant, str) or not _VARIANT.match(variant):
        raise ConfigError(f"variant {variant!r}: expected raw, zscore or drop<m> (e.g. drop4)")
    return ("drop", int(variant[4:])) if variant.startswith("drop") else (variant, 0)


def needs_stats(variant: str) -> bool:
    return parse_variant(variant)[0] != "raw"


def apply_variant(x: np.ndarray, variant: str, mean: np.ndarray | None = None,
                  var: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """Transform features ``x`` (..., C) of one layer; ``mean``/``var`` are that layer's (C,)
    channel statistics on the support split."""
    kind, m = parse_variant(variant)
    if kind == "raw":
        return x
    if mean is None or var is None:
        raise ValueError(f"variant {variant!r} needs the layer's channel mean and variance")
    if kind == "zscore":
        return (x - mean) / np.sqrt(var + eps)
    if m >= x.shape[-1]:
        raise ConfigError(f"variant {variant!r}: cannot drop {m} of {x.shape[-1]} channels")
    keep = np.sort(np.argsort(var)[: x.shape[-1] - m])  # all but the m largest variances
    return x[..., keep]
