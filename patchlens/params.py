"""Parameters from the config: merging them over a module's defaults (the one place that rejects
unknown keys) and the value checks every ``check_params`` uses.

Every task, analysis and data set converter takes a ``params`` mapping from the config and fills
in its own defaults; an unknown key (usually a typo) fails with one line naming the config
location, the unknown key(s) and the known ones, before any work is done. The ``expect_*``
helpers check one value so that every message reads ``<key> = <value>: expected <range>``.
"""
from __future__ import annotations

import numbers
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


def expect_int(value, where: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as int when it is an integer (not a bool, not a string) in [lo, hi]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (lo is None or value >= lo) and (hi is None or value <= hi):
        return int(value)
    rng = (f" >= {lo}" if hi is None else f" in {lo}..{hi}") if lo is not None else \
        (f" <= {hi}" if hi is not None else "")
    raise ConfigError(f"{where} = {value!r}: expected an integer{rng}")


def expect_number(value, where: str, lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False) -> float:
    """``value`` as float when it is a real number (not a bool or string) in the range; ``lo_open``
    excludes ``lo`` itself."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok and (lo is None or (value > lo if lo_open else value >= lo)) \
            and (hi is None or value <= hi):
        return float(value)
    if lo is not None and hi is not None:
        rng = f" in {lo}..{hi}" + (f" (not {lo})" if lo_open else "")
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo}"
    else:
        rng = f" <= {hi}" if hi is not None else ""
    raise ConfigError(f"{where} = {value!r}: expected a number{rng}")


def expect_split(value, where: str, optional: bool = False) -> str | None:
    """A manifest split name (a non-empty string; None too when ``optional``)."""
    if (optional and value is None) or (isinstance(value, str) and value):
        return value
    raise ConfigError(f"{where} = {value!r}: expected a split name"
                      + (" or null" if optional else ""))


def expect_splits(value, where: str) -> list | None:
    """The splits an analysis reads: null (every image) or a non-empty list of split names."""
    if value is None or (isinstance(value, list) and value
                         and all(isinstance(v, str) and v for v in value)):
        return value
    raise ConfigError(f"{where} = {value!r}: expected a list of split names (e.g. [val]) or null")
