"""The representation analyses. Importing this package imports every module in it, so every
analysis declared with ``register_analysis`` (:mod:`.registry`; the built-in ones in :mod:`.specs`)
is known to the config, the start-up check, the workflow and the report: a new analysis is one
new module here (plus its rule and script).
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "registry":
        _importlib.import_module(f"{__name__}.{_m.name}")
