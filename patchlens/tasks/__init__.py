"""The evaluation tasks, one module each. Importing this package imports every module in it, and
each task module registers itself (``register_task(TaskSpec(...))``, :mod:`.registry`): a new task
is one new module here, nothing else.
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "registry":
        _importlib.import_module(f"{__name__}.{_m.name}")
