"""Load, validate and resolve a patchlens config (the one source of truth for a study).

The JSON schema (``schemas/config.schema.yaml``) checks types and fills defaults; this module adds
the cross-references a schema cannot express (a task naming an unknown data set, a model limited to
data sets that do not exist, unknown task parameters) and expands the config into the job lists the
Snakefile asks for. The tasks and analyses are those of their registries
(:mod:`patchlens.tasks.registry`, :mod:`patchlens.analysis.registry`).
Nothing here imports torch.
"""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

# the task and analysis registries sit below config (they import nothing above errors/params):
# config checks the names and parameters a study gives against them
from patchlens.analysis.registry import AnalysisSpec, analysis_names, find_analysis
from patchlens.errors import ConfigError
from patchlens.params import merge_params
from patchlens.tasks.registry import TaskSpec, get_task, task_names

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
TASKS = task_names()  # every registered task (patchlens/tasks/*.py)


def validate(config: dict) -> dict:
    """Validate against the schema and fill defaults in place (Snakemake's validator), then the
    cross-references. The values (every task's and analysis's parameters, the model facts) are
    checked a layer above, by :func:`patchlens.startup.validate`, which the Snakefile's driver and
    the CLI call."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as sm_validate

    normalise_booleans(config)
    check_schema(config)
    try:
        sm_validate(config, str(SCHEMA), set_default=True)
    except WorkflowError as exc:  # check_schema found nothing, so this should not happen
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise ConfigError("config does not match schemas/config.schema.yaml: "
                          + (lines[0] if lines else type(exc).__name__)[:300]) from None
    check_references(config)
    return config


def check_schema(config: dict) -> None:
    """ConfigError naming the config entry (``datasets.voc.img_size``), its value and what the
    schema allows, for the most relevant schema violation; never the schema itself."""
    import jsonschema

    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(config).__name__}")
    schema = _schema()
    validator = _strict_validator()(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    raise ConfigError(f"config does not match schemas/config.schema.yaml: "
                      f"{schema_error_line(error)}")


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def normalise_booleans(config, schema: dict | None = None) -> None:
    """The usual spellings of a boolean, in place, for every key the schema types as boolean:
    ``snakemake --config gpu=true`` passes the string ``'true'`` (only ``True`` becomes a bool),
    so ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) are read as booleans there.
    Anything else is left for the schema to refuse."""
    schema = _schema() if schema is None else schema
    if not isinstance(config, dict):
        return
    props, extra = schema.get("properties", {}), schema.get("additionalProperties")
    for key, value in config.items():
        sub = props.get(key, extra)
        if not isinstance(sub, dict):
            continue
        if sub.get("type") == "boolean":
            word = str(value).strip().lower()
            if isinstance(value, (str, int)) and not isinstance(value, bool) and \
                    word in TRUE + FALSE:
                config[key] = word in TRUE
        else:
            normalise_booleans(value, sub)


@functools.lru_cache(maxsize=1)
def _strict_validator():
    """Draft 2020-12 whose ``integer`` is an int, never a float with an integral value (JSON
    Schema accepts ``8.0`` as an integer; a batch size of 8.0 then fails every job)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def schema_error_line(error) -> str:
    """``<entry> = <value>: <what is wrong>`` of a jsonschema error, one line, short."""
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                  for p in error.absolute_path).lstrip(".") or "(top level)"
    value = error.instance
    shown = repr(value)
    if len(shown) > 60 or isinstance(value, dict):
        shown = None
    if "propertyNames" in error.schema_path:
        shown, why = None, (f"key {value!r} is not allowed; expected letters, digits, '_', '-' "
                            "and '.', not starting with '.' and without '..'")
    elif error.validator == "oneOf" and all(set(o) == {"required"} for o in error.schema["oneOf"]):
        keys = [k for o in error.schema["oneOf"] for k in o["required"]]
        shown, why = None, f"expected exactly one of {', '.join(keys)}"
    elif error.validator in ("oneOf", "anyOf") and error.context:
        options = sorted({_expected(e) for e in error.context})
        why = "expected " + " or ".join(options)
    elif error.validator == "additionalProperties":
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        known = sorted(error.schema.get("properties", {}))
        why = (f"unknown entr{'y' if len(extra) == 1 else 'ies'} {', '.join(map(str, extra))}"
               + (f"; known: {', '.join(known)}" if known else ""))
    else:
        why = _expected(error)
    return f"{key}{f' = {shown}' if shown is not None else ''}: {why}"


def _expected(error) -> str:
    s, v = error.schema, error.validator
    if v == "enum":
        return "expected one of " + ", ".join(map(str, s["enum"]))
    if v == "const":
        return f"expected {s['const']!r}"
    if v == "type":
        return f"expected {s['type'] if isinstance(s['type'], str) else ' or '.join(s['type'])}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
              "exclusiveMaximum": "<"}[v]
        kind = "an integer" if s.get("type") == "integer" else "a number"
        return f"expected {kind} {op} {s[v]}"
    if v == "pattern":
        return f"expected text matching {s['pattern']}"
    if v in ("minItems", "maxItems"):
        lo, hi = s.get("minItems"), s.get("maxItems")
        n = f"{lo}" if lo == hi else f"{lo or 0}..{hi if hi is not None else 'any'}"
        return f"expected a list of {n} items"
    if v == "uniqueItems":
        return "expected a list without repeated items"
    if v == "required":
        return " ".join(error.message.split())[:120]
    if v == "minProperties":
        return f"expected at least {s['minProperties']} entr{'y' if s['minProperties'] == 1 else 'ies'}"
    return " ".join(error.message.split())[:120]


def load_config(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        why = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}: not valid YAML ({why})") from None
    return validate(config)


def check_references(config: dict) -> None:
    for task in config["tasks"]:
        task_spec(task)  # unknown task names fail here, naming the entry
    datasets = set(config["datasets"])
    for key, entry in config["models"].items():
        for ds in entry.get("datasets", []):
            if ds not in datasets:
                raise ConfigError(f"models.{key}.datasets: unknown data set {ds!r} "
                                  f"(defined: {', '.join(sorted(datasets))})")
    for section in ("tasks", "analyses"):
        for name, entry in (config.get(section) or {}).items():
            for ds in entry["datasets"]:
                if ds not in datasets:
                    raise ConfigError(f"{section}.{name}.datasets: unknown data set {ds!r} "
                                      f"(defined: {', '.join(sorted(datasets))})")
            for m in entry.get("models", []):
                if m not in config["models"]:
                    raise ConfigError(f"{section}.{name}.models: unknown model {m!r}")
    for task in config["tasks"]:
        task_params(config, task)  # unknown parameter names fail here, before any job runs
    for name in config.get("analyses") or {}:
        analysis_params(config, name)


def task_spec(task: str) -> TaskSpec:
    """The registered :class:`~patchlens.tasks.registry.TaskSpec` of ``task``; ConfigError
    naming ``tasks.<task>`` when no module registers it."""
    return get_task(task)


def task_params(config: dict, task: str) -> dict:
    """The task's defaults updated with the config's ``tasks.<task>.params``."""
    return merge_params(config["tasks"][task].get("params"), task_spec(task).defaults,
                        f"tasks.{task}.params")


def analysis_spec(name: str) -> AnalysisSpec:
    """The registered :class:`~patchlens.analysis.registry.AnalysisSpec` of ``name``; ConfigError
    naming ``analyses.<name>`` when no module registers it."""
    spec = find_analysis(name)
    if spec is None:
        raise ConfigError(f"analyses.{name}: unknown analysis (known: "
                          f"{', '.join(analysis_names())}); remove it from the config or add its "
                          "module to patchlens/analysis")
    return spec


def analysis_params(config: dict, name: str) -> dict:
    """``analyses.<name>.params`` with every default filled, the analysis's own and its sampling
    (unknown names fail here)."""
    spec = analysis_spec(name)
    given = config["analyses"][name].get("params")
    return merge_params(given, {**spec.sampling, **spec.defaults}, f"analyses.{name}.params")


def model_datasets(config: dict, model: str) -> list[str]:
    entry = config["models"][model]
    return list(entry.get("datasets") or config["datasets"])


def task_variants(config: dict, task: str) -> list[str]:
    return list(config["tasks"][task].get("variants") or config["variants"])


def evaluation_jobs(config: dict) -> list[tuple[str, str, str, str]]:
    """Every (task, model, dataset, variant) the config asks for."""
    jobs = []
    for task, entry in config["tasks"].items():
        for ds in entry["datasets"]:
            for model in config["models"]:
                if ds in model_datasets(config, model):
                    jobs += [(task, model, ds, v) for v in task_variants(config, task)]
    return jobs


def analysis_models(config: dict, analysis: str, timm_only: bool | None = None) -> list[str]:
    """The models an analysis runs on: ``analyses.<name>.models``, else every model (every timm
    model when ``timm_only``; default: the analysis's own ``timm_only``)."""
    entry = config["analyses"][analysis]
    if timm_only is None:
        timm_only = analysis_spec(analysis).timm_only
    models = entry.get("models") or [m for m, e in config["models"].items()
                                     if "timm" in e or not timm_only]
    return models


def analysis_pairs(config: dict, analysis: str) -> list[tuple[str, str]]:
    """Every (model, data set) the configured analysis covers, data set then model order."""
    entry = (config.get("analyses") or {}).get(analysis)
    if not entry:
        return []
    return [(m, d) for d in entry["datasets"] for m in analysis_models(config, analysis)
            if d in model_datasets(config, m)]


def analysis_outputs(config: dict, analysis: str, results: str = "results") -> list[str]:
    """The job outputs of a configured analysis (its ``outputs`` under ``results``): one per
    (model, data set) when the path has ``{model}``, else one per data set; [] when the config
    does not ask for the analysis."""
    spec = analysis_spec(analysis)
    if "{model}" in spec.outputs:
        return [f"{results}/{spec.outputs.format(model=m, dataset=d)}"
                for m, d in analysis_pairs(config, analysis)]
    entry = (config.get("analyses") or {}).get(analysis)
    return [f"{results}/{spec.outputs.format(dataset=d)}" for d in (entry or {}).get("datasets", [])]
