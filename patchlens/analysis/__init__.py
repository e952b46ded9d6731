"""The representation analyses. Importing this package imports every module in it, so every
analysis declared with ``register_analysis`` (:mod:`.registry`; the built-in ones in :mod:`.specs`)
is known to the config, the start-up check, the workflow and the report: a new analysis is one
new module here (plus its rule and script).
"""
from patchlens.modules import import_all as _import_all

_import_all(__name__, __path__)
