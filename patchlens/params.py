"""Merging user parameters over a module's defaults: the one place that rejects unknown keys.

Every task, analysis and data set converter takes a ``params`` mapping from the config and fills
in its own defaults; an unknown key (usually a typo) fails with one line naming the config
location, the unknown key(s) and the known ones, before any work is done.
"""
from __future__ import annotations

from typing import Any

from patchlens.errors import ConfigError


def merge_params(given: dict | None, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """``{**defaults, **given}``; ConfigError when ``given`` has a key ``defaults`` lacks.

    ``where`` names the config location in the message, e.g. ``"tasks.tracking.params"``:
    ``"<where>: unknown parameter(s) a, b; known: x, y, z"``. ``None`` counts as no parameters.
    The result is a new dict (neither argument is modified).
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {', '.join(map(str, unknown))}; "
                          f"known: {', '.join(sorted(map(str, defaults)))}")
    return {**defaults, **given}
