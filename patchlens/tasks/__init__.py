"""The evaluation tasks, one module each. Importing this package imports every module in it, and
each task module registers itself (``register_task(TaskSpec(...))``, :mod:`.registry`): a new task
is one new module here, nothing else.
"""
from patchlens.modules import import_all as _import_all

_import_all(__name__, __path__)
