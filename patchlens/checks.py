"""Checks of configured VALUES that run when the workflow starts (``snakemake -n`` fails on them),
before any data set is prepared or any feature is extracted.

The schema checks types; :func:`patchlens.config.check_references` checks names; this module runs
the validators the jobs themselves run -- every task's and analysis's ``check_params`` -- and the
facts a model's architecture fixes, read from a build on torch's ``meta`` device (no memory, no
weights, one build per architecture, :func:`patchlens.models.resolve.resolve_model`):

* ``models.<m>.timm`` / ``kwargs``: timm can build the architecture with those arguments;
* ``models.<m>.layers``: block indices in ``-n_blocks .. n_blocks-1``;
* ``variants`` / ``tasks.<t>.variants``: ``drop<k>`` keeps at least one channel of every model
  the task runs on (the oracle's channel count depends on the data set and is checked by its job);
* ``datasets.<d>.img_size``: a patch grid of at least 2x2 for every model on the data set;
* ``analyses.attention.params.layers``: blocks of every analysed model.

Every failure is a :class:`~patchlens.errors.ConfigError` whose one line names the full key, the
value and what is allowed. The small ``expect_*`` helpers are shared by the task and analysis
validators so that every message reads ``<key> = <value>: expected <range>``.
"""
from __future__ import annotations

import numbers

from patchlens.errors import ConfigError


# -- value helpers (used by the check_params of tasks and analyses) ------------------------------
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


# -- the checks run by patchlens.config.validate ------------------------------------------------
def check_values(config: dict) -> None:
    """Every value check of the module docstring; ConfigError (one line) on the first failure."""
    from patchlens.config import analysis_params, task_spec

    for task, entry in config["tasks"].items():
        task_spec(task).check_params(entry.get("params"))
    analyses = config.get("analyses") or {}
    settings = {name: analysis_params(config, name) for name in analyses}
    if "attention" in settings:
        from patchlens.analysis import attention_stats, offset_heads

        p = settings["attention"]
        attention_stats.check_params({k: p[k] for k in attention_stats.DEFAULT_PARAMS})
        offset_heads.check_params(p["offset_heads"])
        expect_splits(p["split"], "analyses.attention.params.split")
        expect_int(p["max_images"], "analyses.attention.params.max_images", 1)
    if "cka" in settings:
        from patchlens.analysis import cka

        p = settings["cka"]
        cka.check_params({k: p[k] for k in cka.DEFAULT_PARAMS})
        expect_splits(p["split"], "analyses.cka.params.split")
    if "token_norms" in settings:
        from patchlens.analysis import token_norms

        p = settings["token_norms"]
        token_norms.check_params({k: v for k, v in p.items() if k != "split"})
        expect_splits(p["split"], "analyses.token_norms.params.split")

    specs = {key: model_spec(key, entry) for key, entry in config["models"].items()}
    for key, spec in specs.items():
        check_layers(config["models"][key].get("layers", "all"), spec["n_blocks"],
                     f"models.{key}.layers")
    check_grids(config, specs)
    check_variants(config, specs)
    if "attention" in settings and settings["attention"].get("layers") is not None:
        from patchlens.config import analysis_models

        for m in analysis_models(config, "attention"):
            check_layers(settings["attention"]["layers"], specs[m]["n_blocks"],
                         "analyses.attention.params.layers", negative=False, model=m)


def model_spec(key: str, entry: dict) -> dict:
    """:func:`~patchlens.models.resolve.resolve_model`, plus ``channels`` (None for the oracle:
    its width depends on the data set)."""
    from patchlens.models.resolve import resolve_model

    spec = resolve_model(key, entry)
    if spec["kind"] == "pixels":
        spec["channels"] = spec["patch_size"] ** 2 * 3
    elif spec["kind"] == "oracle":
        spec["channels"] = None
    return spec


def check_layers(layers, n_blocks: int, where: str, negative: bool = True,
                 model: str | None = None) -> None:
    """``all``/None or block indices in ``-n_blocks .. n_blocks-1`` (``0 .. n_blocks-1`` when
    ``negative`` is False)."""
    if layers in (None, "all"):
        return
    lo = -n_blocks if negative else 0
    bad = [i for i in layers
           if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not lo <= i < n_blocks]
    if bad or not list(layers):
        whose = f"model {model!r}" if model else "the model"
        raise ConfigError(f"{where} = {list(layers)!r}: {whose} has {n_blocks} blocks; expected "
                          f"block indices in {lo}..{n_blocks - 1}")


def check_grids(config: dict, specs: dict) -> None:
    """Every (data set, model) input gives a patch grid of at least 2x2."""
    from patchlens.config import model_datasets
    from patchlens.models.resolve import input_geometry

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
    from patchlens.config import evaluation_jobs
    from patchlens.features.variants import parse_variant

    for task, model, _, variant in evaluation_jobs(config):
        kind, k = parse_variant(variant)
        channels = specs[model]["channels"]
        if kind == "drop" and channels is not None and k >= channels:
            where = (f"tasks.{task}.variants" if config["tasks"][task].get("variants")
                     else "variants")
            raise ConfigError(f"{where}: {variant} on model {model!r} with {channels} channels; "
                              f"expected drop<k> with k <= {channels - 1}")
