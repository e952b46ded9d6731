"""The task registry (patchlens/tasks/registry.py): every task module declares its contract once,
and the config, the evaluator, the tables, the figure style and the report read it; a seventh
task is one new module in patchlens/tasks."""
import importlib
import numbers
import pkgutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import patchlens.tasks
from patchlens import config as C
from patchlens.errors import ConfigError
from patchlens.tasks.registry import TaskSpec, all_tasks, get_task, register_task, task_names
from helpers.extended_package import probe_with_module
from helpers.synthetic import write_dataset, write_store

ROOT = Path(__file__).resolve().parents[2]
TASK_MODULES = [m.name for m in pkgutil.iter_modules(patchlens.tasks.__path__)
                if m.name != "registry" and not m.name.startswith("_")]


def test_the_tasks_are_registered_in_report_order():
    assert task_names() == ("fewshot_seg", "instance_id", "retrieval", "tracking", "keypoints",
                            "lowshot_cls", "depth", "hummingbird")
    assert C.TASKS == task_names()
    assert sorted(TASK_MODULES) == sorted(task_names())


def _plain(v):
    return v.tolist() if isinstance(v, np.ndarray) else v


@pytest.mark.parametrize("name", TASK_MODULES)
def test_each_module_registers_its_own_contract(name):
    module = importlib.import_module(f"patchlens.tasks.{name}")
    spec = get_task(name)
    assert module.SPEC is spec and C.task_spec(name) is spec
    assert spec.defaults is module.DEFAULT_PARAMS and spec.requires == module.REQUIRES
    assert spec.run is module.run and spec.check_params is module.check_params
    # the defaults are valid and complete, and the validator names the config key
    filled = spec.check_params({})
    assert {k: _plain(v) for k, v in filled.items()} == \
        {k: _plain(v) for k, v in module.DEFAULT_PARAMS.items()}


def _typed_keys():
    """(task, key) for every registered task's parameter whose default is a number or a flag."""
    return [(s.name, k) for s in all_tasks() for k, v in s.defaults.items()
            if isinstance(v, (bool, numbers.Number))]


@pytest.mark.parametrize("name", [s.name for s in all_tasks()])
def test_an_unknown_parameter_is_refused_naming_the_task_key(name):
    """Every registered task refuses a key it does not define, naming ``tasks.<name>.params``
    and the key (a typo must not silently run the defaults)."""
    with pytest.raises(ConfigError,
                       match=rf"^tasks\.{name}\.params: unknown parameter\(s\) no_such_param;"):
        get_task(name).check_params({"no_such_param": 1})


@pytest.mark.parametrize("name,key", _typed_keys())
def test_a_wrongly_typed_parameter_is_refused_naming_its_key(name, key):
    """Every number or flag parameter of every registered task refuses a string, naming the full
    key ``tasks.<name>.params.<key>``."""
    with pytest.raises(ConfigError, match=rf"tasks\.{name}\.params\.{key}\b"):
        get_task(name).check_params({key: "x"})


def test_report_and_style_read_the_registry():
    from patchlens.report import figures, html, style, tables

    specs = all_tasks()
    assert tables.HEADLINE_METRIC == {s.name: s.headline for s in specs}
    assert tables.TASK_ORDER == [s.name for s in specs]
    assert style.TASK_TITLES == {s.name: s.title for s in specs}
    assert style.TASK_COLORS == {s.name: s.color for s in specs}
    assert len(set(style.TASK_COLORS.values())) == len(specs)  # told apart in shared panels
    sections = [s for s in html.SECTIONS if s[3] is not None]
    assert sections == [(s.name, s.title, list(s.figures), s.name) for s in specs]
    for s in specs:  # a misspelt figure name would silently leave the section without figures
        assert s.figures and all(f in figures.FIGURES for f in s.figures), s.name


def test_unknown_task_fails_at_config_check_naming_it():
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["tasks"]["fewshot_segm"] = cfg["tasks"].pop("fewshot_seg")
    with pytest.raises(ConfigError, match=r"^tasks\.fewshot_segm: unknown task \(known: "
                                          r"fewshot_seg, instance_id"):
        C.validate(cfg)


def test_register_task_rejects_duplicates_and_malformed_specs():
    good = get_task("retrieval")
    with pytest.raises(ValueError, match="already registered"):
        register_task(good)
    for bad in ({"name": "Bad-Name"}, {"color": "red"}, {"headline": ""},
                {"requires": ["objects"]}, {"defaults": None}, {"order": 1.5}):
        fields = {**good.__dict__, "name": "not_registered", **bad}
        with pytest.raises(ValueError):
            register_task(TaskSpec(**fields))
    assert "not_registered" not in task_names()


# a seventh task: the mean L2 norm of the patch tokens of one split, per layer
TOY = '''
"""A toy task: the mean L2 norm of the patch tokens of one split (docs/protocols.md)."""
import numpy as np
import pandas as pd

from patchlens.params import expect_split, merge_params
from patchlens.stats.units import records
from patchlens.tasks.registry import TaskSpec, register_task

DEFAULT_PARAMS = {"split": "val"}
REQUIRES = ()


def check_params(params):
    p = merge_params(params, DEFAULT_PARAMS, "tasks.toy.params")
    expect_split(p["split"], "tasks.toy.params.split")
    return p


def run(store, dataset, transform, params, layers=None, units=None):
    p = check_params(params)
    images = dataset.split(p["split"])
    rows = []
    for layer in (store.layers if layers is None else layers):
        norms = np.linalg.norm(transform(layer, store.tokens(layer, images)), axis=-1)
        per_image = norms.reshape(len(images), -1).mean(1)
        rows.append({"layer": layer, "seed": 0, "metric": "norm",
                     "value": float(per_image.mean()), "n_eval": len(images), "n_skipped": 0})
        if units is not None:
            units.append(records(layer, 0, "norm", images, num=per_image))
    return pd.DataFrame(rows)


SPEC = register_task(TaskSpec(
    name="toy", title="Toy norm", color="#123456", headline="norm", defaults=DEFAULT_PARAMS,
    requires=REQUIRES, check_params=check_params, run=run, order=1000, figures=()))
'''

# patchlens.tasks imported with one more directory on its __path__: the package as it would be
# with toy.py added to patchlens/tasks, and nothing else changed
PROBE = '''
import json, sys
import yaml

from patchlens import config as C
from patchlens.evaluate import evaluate_all
from patchlens.plan import task_flop
from patchlens.report import html, style, tables

cfg = yaml.safe_load(open(sys.argv[2]))
cfg["tasks"] = {"toy": {"datasets": ["scenes"], "params": {"split": "train"}}}
C.validate(cfg)
res = evaluate_all("toy", C.task_params(cfg, "toy"), sys.argv[3], sys.argv[4],
                   {"raw": sys.argv[5]}, labels={"model": "m", "dataset": "ds"},
                   bootstrap={"n_boot": 50})
print(json.dumps({"tasks": list(C.TASKS), "params": C.task_params(cfg, "toy"),
                  "headline": tables.HEADLINE_METRIC.get("toy"),
                  "title": style.TASK_TITLES.get("toy"), "color": style.TASK_COLORS.get("toy"),
                  "section": [list(s) for s in html.SECTIONS if s[0] == "toy"],
                  "flop": task_flop("toy", {}, {"train": 3, "val": 2}, {}, (2, 2), 3),
                  "bytes": res["bytes_read"]}))
'''


def test_a_seventh_task_is_one_new_module(tmp_path):
    rng = np.random.default_rng(0)
    images = [{"image": f"im{i}", "split": "train" if i < 3 else "val", "height": 32,
               "width": 32} for i in range(5)]
    ds = write_dataset(tmp_path / "ds", images, ["background"])
    tokens = rng.normal(size=(5, 2, 2, 2, 3)).astype(np.float16).astype(np.float32)
    feats = write_store(tmp_path / "f.h5", [d["image"] for d in images], tokens)
    out = tmp_path / "raw.csv"
    got = probe_with_module("patchlens.tasks", "toy", TOY, PROBE, tmp_path,
                            ROOT / "tests" / "configs" / "tiny.yaml", feats, ds, out)
    assert got["tasks"] == [*task_names(), "toy"]
    assert got["params"] == {"split": "train"}
    assert (got["headline"], got["title"], got["color"]) == ("norm", "Toy norm", "#123456")
    assert got["section"] == [["toy", "Toy norm", [], "toy"]]
    assert got["flop"] == 2.0 * 5 * 4 * 3  # no cost model: one pass over every token
    # the score table the evaluator wrote, against the norms computed here
    table = pd.read_csv(out).set_index("layer")
    want = np.linalg.norm(tokens[:3], axis=-1).mean((2, 3)).mean(0)  # (layers,)
    np.testing.assert_allclose(table["value"].to_numpy(), want, rtol=1e-5)
    assert set(table["task"]) == {"toy"} and (table["n_eval"] == 3).all()
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()


def _imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_tasks_and_analyses_share_evaluation_code_not_each_other():
    pkg = ROOT / "patchlens"
    tasks = {f"patchlens.tasks.{n}" for n in TASK_MODULES}
    for path in sorted((pkg / "tasks").glob("*.py")):
        other = (_imports(path) & tasks) - {f"patchlens.tasks.{path.stem}"}
        assert not other, f"{path.name} imports task module(s) {sorted(other)}"
    for sub in ("analysis", "evaluation", "stats"):
        for path in sorted((pkg / sub).glob("*.py")):
            bad = {m for m in _imports(path) if m.startswith("patchlens.tasks")}
            assert not bad, f"{sub}/{path.name} imports {sorted(bad)}"
