"""Feature variants evaluated by every task: ``raw``, ``drop{m}`` and ``zscore``.

Vanyan et al. (2024, arXiv 2401.00463, Sec. 5) find that MAE-style patch embeddings carry a few
channels of very high variance that dominate cosine/Euclidean k-NN; removing the ``m`` channels of
largest variance (measured on the support split, per layer) recovers much of the gap. ``zscore``
standardises every channel with the same statistics.

:class:`VariantSpec` is a variant resolved for one layer (which channels ``drop{m}`` removes, the
mean and scale of ``zscore``): what the evaluator hands a task, so that a similarity search can
serve every variant from one product (:mod:`patchlens.evaluation.similarity`) while a task that
needs the features themselves (a linear probe) calls :meth:`VariantSpec.apply`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class VariantSpec:
    """One variant resolved for one layer. ``kind``: ``raw``, ``drop`` or ``zscore``; ``drop``:
    the dropped channel indices (ascending; empty unless ``kind == "drop"``); ``mean``/``std``:
    the zscore statistics (``std = sqrt(var + eps)``), None otherwise; ``channels``: C."""
    name: str
    kind: str
    channels: int | None = None
    drop: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The transformed features (..., C') of ``x`` (..., C): :func:`apply_variant`'s result."""
        if self.kind == "raw":
            return x
        if self.kind == "zscore":
            return (x - self.mean) / self.std
        return x[..., np.setdiff1d(np.arange(x.shape[-1]), self.drop)]

    def __call__(self, layer, x):  # the evaluator's older ``transform(layer, x)`` contract
        return self.apply(x)


def variant_spec(variant: str, mean: np.ndarray | None = None, var: np.ndarray | None = None,
                 eps: float = 1e-6) -> VariantSpec:
    """The :class:`VariantSpec` of ``variant`` for one layer with channel statistics
    ``mean``/``var`` (C,) (not needed for ``raw``). ``drop{m}`` drops the m channels of largest
    variance, the same channels as :func:`apply_variant` (so the sets of drop1 < drop2 < ... are
    nested)."""
    kind, m = parse_variant(variant)
    if kind == "raw":
        return VariantSpec(variant, "raw")
    if mean is None or var is None:
        raise ValueError(f"variant {variant!r} needs the layer's channel mean and variance")
    var = np.asarray(var)
    c = var.shape[-1]
    if kind == "zscore":
        return VariantSpec(variant, "zscore", c, mean=np.asarray(mean), std=np.sqrt(var + eps))
    if m >= c:
        raise ConfigError(f"variant {variant!r}: cannot drop {m} of {c} channels")
    return VariantSpec(variant, "drop", c, drop=np.sort(np.argsort(var)[c - m:]).astype(np.int64))
