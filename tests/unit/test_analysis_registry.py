"""The analysis registry (patchlens/analysis/registry.py): every analysis declares its contract
once -- defaults, sampling, check_params, outputs, tables -- and the config, the start-up check,
the workflow's targets and the provenance read it; a fourth analysis is one new module."""
import copy
from pathlib import Path

import pytest
from helpers.extended_package import probe_with_module
import yaml

from patchlens import config as C
from patchlens.analysis import attention_stats, cka, token_norms
from patchlens.analysis.registry import AnalysisSpec, all_analyses, find_analysis, register_analysis
from patchlens.errors import ConfigError
from patchlens.startup import validate

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"attention": attention_stats, "cka": cka, "token_norms": token_norms}


@pytest.fixture(scope="module")
def tiny():
    return yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())


def test_the_three_analyses_are_registered_with_their_modules_defaults():
    assert [s.name for s in all_analyses()] == ["attention", "cka", "token_norms"]
    for name, module in MODULES.items():
        spec = find_analysis(name)
        assert {k: spec.defaults[k] for k in module.DEFAULT_PARAMS} == module.DEFAULT_PARAMS
        filled = {**spec.sampling, **spec.defaults}
        assert spec.check_params(copy.deepcopy(filled)) == filled  # the defaults are valid


@pytest.mark.parametrize("name, key, value", [
    ("attention", "max_images", 0), ("attention", "radius", 0), ("attention", "split", []),
    ("cka", "batch_size", 2), ("cka", "split", "val"), ("token_norms", "thresholds", [0.5])])
def test_the_start_up_check_runs_each_analysis_check_params(tiny, name, key, value):
    cfg = copy.deepcopy(tiny)
    cfg["analyses"][name] = {"datasets": ["scenes"], "params": {key: value}}
    with pytest.raises(ConfigError, match=rf"^analyses\.{name}\.params\.{key}"):
        validate(cfg)


def test_the_report_sections_of_the_analyses_come_from_the_registry():
    from patchlens.report import figures, html

    specs = all_analyses()
    sections = [s for s in html.SECTIONS if s[0] in {a.name for a in specs}]
    assert sections == [(a.name, a.title, list(a.figures), None) for a in specs]
    for a in specs:  # a misspelt figure name would silently leave the section without figures
        assert a.figures and all(f in figures.FIGURES for f in a.figures), a.name


def test_unknown_analysis_fails_naming_it(tiny):
    cfg = copy.deepcopy(tiny)
    cfg["analyses"]["ckaa"] = cfg["analyses"].pop("cka")
    with pytest.raises(ConfigError, match=r"^analyses\.ckaa: unknown analysis \(known: "
                                          r"attention, cka, token_norms\)"):
        C.validate(cfg)


def test_outputs_follow_the_declared_paths(tiny):
    cfg = C.validate(copy.deepcopy(tiny))
    assert C.analysis_outputs(cfg, "attention", "R") == ["R/attention/tiny_vit/scenes.h5"]
    assert C.analysis_outputs(cfg, "cka", "R") == ["R/cka/scenes.parquet"]
    assert C.analysis_outputs(cfg, "token_norms", "R") == []  # not configured


def test_register_analysis_rejects_duplicates_and_malformed_specs():
    good = find_analysis("cka")
    with pytest.raises(ValueError, match="already registered"):
        register_analysis(good)
    for bad in ({"name": "Bad-Name"}, {"outputs": "x.parquet"}, {"reads": "pixels"},
                {"sampling": {"seed": 0}, "defaults": {"seed": 1}}, {"check_params": None}):
        fields = {**good.__dict__, "name": "fresh", **bad}
        with pytest.raises(ValueError):
            register_analysis(AnalysisSpec(**fields))
    assert find_analysis("fresh") is None


# a fourth analysis, as one module: the mean token norm per layer of a subset of the images
TOY = '''
"""A toy analysis: the mean token norm of each layer (docs/protocols.md)."""
from patchlens.analysis.registry import AnalysisSpec, register_analysis
from patchlens.params import expect_int, expect_number, expect_splits

DEFAULT_PARAMS = {"scale": 1.0}


def check_params(p):  # every default filled (unknown keys are refused before this is called)
    expect_number(p["scale"], "analyses.toy_norms.params.scale", 0, lo_open=True)
    expect_splits(p["split"], "analyses.toy_norms.params.split")
    expect_int(p["max_images"], "analyses.toy_norms.params.max_images", 1)
    return p


def flop(p, counts, models):  # one job per (model, data set): a norm per token and channel
    f = models[0]
    n = min(sum(counts.values()), p["max_images"])
    return {"flop": 2.0 * n * f["grid"][0] * f["grid"][1] * f["dim"] * f["n_layers"],
            "read": f["feature_bytes"]}


SPEC = register_analysis(AnalysisSpec(
    name="toy_norms", title="Toy norms", defaults=DEFAULT_PARAMS,
    sampling={"split": None, "max_images": 8}, check_params=check_params,
    outputs="toy_norms/{model}/{dataset}.parquet", tables=("toy_norms.parquet",),
    reads="features", order=40, figures=("toy_norms",), flop=flop, threads=3))
'''

# patchlens.analysis imported with one more directory on its __path__: the package as it would be
# with toy_norms.py added to patchlens/analysis, and nothing else changed
PROBE = '''
import copy, json, sys
import yaml

from patchlens import config as C
from patchlens.errors import ConfigError
from patchlens.report.html import SECTIONS
from patchlens.report.provenance import provenance_pairs
from patchlens.startup import validate

cfg = yaml.safe_load(open(sys.argv[2]))
cfg["tasks"] = {}
cfg["analyses"] = {"toy_norms": {"datasets": ["scenes"], "params": {"scale": 2.0}}}
errors = []
for params in ({"scale": 0}, {"max_images": 2.5}, {"scael": 1}):
    bad = copy.deepcopy(cfg)
    bad["analyses"]["toy_norms"]["params"] = params
    try:
        validate(bad)
    except ConfigError as exc:
        errors.append(str(exc))
validate(cfg)
from patchlens.data.sizes import split_counts
from patchlens.plan import feature_bytes, grid_of, model_facts, plan
from patchlens.report.statistics import FILES
n = sum(split_counts(cfg["datasets"]["scenes"], "no/manifest.csv").values())
expect = {}
for m, entry in cfg["models"].items():
    f = model_facts(entry)
    grid = grid_of(cfg["datasets"]["scenes"].get("img_size", 224), f["patch_size"])
    expect[m] = [2.0 * min(n, 8) * grid[0] * grid[1] * f["dim"] * f["n_layers"],
                 feature_bytes(f, n, grid)]
rows = [r for r in plan(cfg, "no")["jobs"] if r["rule"] == "toy_norms"]
print(json.dumps({"plan": {r["model"]: [r["flop"], r["bytes_read"]] for r in rows},
                  "threads": sorted({r["threads"] for r in rows}), "expect": expect,
                  "table": FILES.get("toy_norms"),"params": C.analysis_params(cfg, "toy_norms"),
                  "outputs": C.analysis_outputs(cfg, "toy_norms", "R"),
                  "pairs": provenance_pairs(cfg), "errors": errors,
                  "section": [list(s) for s in SECTIONS if s[0] == "toy_norms"]}))
'''


def test_a_fourth_analysis_is_one_new_module(tmp_path):
    got = probe_with_module("patchlens.analysis", "toy_norms", TOY, PROBE, tmp_path,
                            ROOT / "tests" / "configs" / "tiny.yaml")
    assert got["params"] == {"split": None, "max_images": 8, "scale": 2.0}
    # every model on the data set (timm_only is False): one output and one feature file each
    assert got["outputs"] == [f"R/toy_norms/{m}/scenes.parquet"
                              for m in ("tiny_vit", "pixels", "oracle")]
    assert got["pairs"] == [["tiny_vit", "scenes"], ["pixels", "scenes"], ["oracle", "scenes"]]
    assert got["section"] == [["toy_norms", "Toy norms", ["toy_norms"], None]]
    # the plan costs it from its own flop(), one row per model, at the threads it declares; its
    # table (a plain file name: optional, columns unchecked) is read with the statistics tables
    assert got["plan"] == got["expect"] and got["threads"] == [3]
    assert got["table"] == "toy_norms.parquet"
    assert [e.split(" ")[0] for e in got["errors"]] == [
        "analyses.toy_norms.params.scale", "analyses.toy_norms.params.max_images",
        "analyses.toy_norms.params:"]
