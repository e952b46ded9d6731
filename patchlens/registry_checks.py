"""What the task registry (:mod:`patchlens.tasks.registry`) and the analysis registry
(:mod:`patchlens.analysis.registry`) check alike when a module registers its spec, and the order
in which both list their entries.

A spec is a frozen dataclass with at least ``name`` (lower_case_with_underscores, unique in its
registry) and ``order`` (an integer: entries are listed by ``order``, then name). A malformed
declaration is a programming error, raised as ValueError when its module is imported.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_identity(spec, registry: Mapping, where: str, kind: str) -> None:
    """ValueError unless ``spec.name`` is a valid name not yet in ``registry``; ``kind`` ("task",
    "analysis") and ``where`` name the declaration in the message."""
    if not isinstance(spec.name, str) or not NAME.match(spec.name):
        raise ValueError(f"{where}: name must be lower_case_with_underscores")
    if spec.name in registry:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"{where}: {article} {kind} of this name is already registered")


def check_order(spec, where: str) -> None:
    """ValueError unless ``spec.order`` is an integer (a bool is not)."""
    if not isinstance(spec.order, int) or isinstance(spec.order, bool):
        raise ValueError(f"{where}: order must be an integer")


def by_order(registry: Mapping) -> tuple:
    """The specs of ``registry``, by ``order`` then name."""
    return tuple(sorted(registry.values(), key=lambda s: (s.order, s.name)))


def names_by_order(registry: Mapping) -> tuple[str, ...]:
    """The names of the specs of ``registry``, by ``order`` then name."""
    return tuple(s.name for s in by_order(registry))
