"""Importing every module of a package: how the task and analysis packages fill their registries
(each module registers itself when imported, so a new task or analysis is one new module)."""
from __future__ import annotations

import importlib
import pkgutil


def import_all(package: str, path, skip: tuple[str, ...] = ("registry",)) -> None:
    """Import every module ``<package>.<name>`` found on ``path`` (a package's ``__path__``),
    except private ones (``_name``) and ``skip``."""
    for m in pkgutil.iter_modules(path):
        if not m.name.startswith("_") and m.name not in skip:
            importlib.import_module(f"{package}.{m.name}")
