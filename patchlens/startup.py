"""The start-up check of a whole config: what ``snakemake -n`` and ``patchlens plan`` run before
any data set is prepared or any feature is extracted. It sits above :mod:`patchlens.config` (which
never imports it): the Snakefile's driver and the CLI call :func:`validate` / :func:`load_config`.

:func:`patchlens.config.validate` checks types (the schema) and names (cross-references); this
module adds the validators the jobs themselves run -- every task's and analysis's
``check_params`` -- and the facts a model's architecture fixes, read from a build on torch's
``meta`` device (no memory, no weights, one build per architecture,
:func:`patchlens.models.resolve.resolve_model`):

* ``models.<m>.timm`` / ``kwargs``: timm can build the architecture with those arguments;
* ``models.<m>.layers``: block indices in ``-n_blocks .. n_blocks-1``
  (:func:`patchlens.models.layers.check_layers`);
* ``variants`` / ``tasks.<t>.variants``: ``drop<k>`` keeps at least one channel of every model
  the task runs on (the oracle's channel count depends on the data set and is checked by its job);
* ``datasets.<d>.img_size``: a patch grid of at least 2x2 for every model on the data set;
* ``datasets.<d>.params`` of the ``scenes`` generator, and ``variance.split`` against its splits;
* an analysis's settings against every model it runs on (its ``check_model``, e.g. the
  attention layers are blocks of every analysed model).

Every failure is a :class:`~patchlens.errors.ConfigError` whose one line names the full key, the
value and what is allowed.
"""
from __future__ import annotations

import re

from patchlens import config as C
from patchlens.config import (analysis_models, analysis_params, analysis_spec, evaluation_jobs,
                              model_datasets, task_spec)
from patchlens.data.scenes.params import SPLITS as SCENE_SPLITS
from patchlens.data.scenes.params import resolve_params as resolve_scenes
from patchlens.errors import ConfigError
from patchlens.features.variants import parse_variant
from patchlens.models.layers import check_layers
from patchlens.models.resolve import input_geometry, resolve_model


def validate(config: dict) -> dict:
    """:func:`patchlens.config.validate` (schema, defaults, cross-references), then
    :func:`check_values` (imports torch and timm, ~4 s the first time); ``config`` filled in place
    and returned."""
    C.validate(config)
    check_values(config)
    return config


def load_config(path) -> dict:
    """The config file at ``path``, validated as :func:`validate` does."""
    config = C.load_config(path)
    check_values(config)
    return config


def check_values(config: dict) -> None:
    """Every value check of the module docstring; ConfigError (one line) on the first failure."""
    for task, entry in config["tasks"].items():
        task_spec(task).check_params(entry.get("params"))
    analyses = {name: analysis_params(config, name) for name in config.get("analyses") or {}}
    for name, settings in analyses.items():
        analysis_spec(name).check_params(settings)
    specs = {key: resolve_model(key, entry) for key, entry in config["models"].items()}
    for key, spec in specs.items():
        check_layers(config["models"][key].get("layers", "all"), spec["n_blocks"],
                     f"models.{key}.layers")
    check_grids(config, specs)
    check_variants(config, specs)
    check_scenes(config)
    for name, settings in analyses.items():
        check_model = analysis_spec(name).check_model
        for m in analysis_models(config, name) if check_model else ():
            check_model(settings, m, specs[m])


def check_grids(config: dict, specs: dict) -> None:
    """Every (data set, model) input gives a patch grid of at least 2x2."""
    for key, spec in specs.items():
        for ds in model_datasets(config, key):
            img_size = config["datasets"][ds].get("img_size", 224)
            _, grid = input_geometry(img_size, spec["patch_size"])
            if min(grid) < 2:
                raise ConfigError(
                    f"datasets.{ds}.img_size = {img_size!r}: model {key!r} (patch size "
                    f"{spec['patch_size']}) gets a {grid[0]}x{grid[1]} patch grid; expected at "
                    f"least 2x2, i.e. img_size >= {2 * spec['patch_size']}")


def check_variants(config: dict, specs: dict) -> None:
    """``drop<k>`` keeps at least one channel of every model the task is evaluated on."""
    for task, model, _, variant in evaluation_jobs(config):
        kind, k = parse_variant(variant)
        channels = specs[model]["channels"]
        if kind == "drop" and channels is not None and k >= channels:
            where = (f"tasks.{task}.variants" if config["tasks"][task].get("variants")
                     else "variants")
            raise ConfigError(f"{where}: {variant} on model {model!r} with {channels} channels; "
                              f"expected drop<k> with k <= {channels - 1}")


def check_scenes(config: dict) -> None:
    """The generator parameters of every ``scenes`` data set (``datasets.<d>.params``: negative,
    zero, fractional or misspelt values), and ``variance.split`` against the splits it makes."""
    jobs = {d for _, _, d, _ in evaluation_jobs(config)}
    for name, entry in config["datasets"].items():
        if entry["source"] != "scenes":
            continue
        where = f"datasets.{name}.params"
        try:
            resolve_scenes(entry.get("params"))
        except ConfigError as exc:
            msg = str(exc).replace("scenes parameters (datasets.<name>.params)", where)
            named = re.match(r"^scenes parameter '([^']+)': (.*)$", msg)
            raise ConfigError(f"{where}.{named[1]}: {named[2]}" if named else msg) from None
        split = config["variance"]["split"]
        unknown = [s for s in split if s not in SCENE_SPLITS]
        if name in jobs and unknown:
            raise ConfigError(f"variance.split = {split!r}: data set {name!r} (scenes) has no "
                              f"split {', '.join(unknown)}; its splits: {', '.join(SCENE_SPLITS)}")
