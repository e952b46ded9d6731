"""Bad configs are refused before any job with one line naming the key (issue 18, items 2, 5, 10,
11): through ``patchlens plan CONFIG`` (exit code 1, one line on stderr) -- the same start-up check
the Snakefile's driver runs -- and boolean keys given on the command line in their usual
spellings, in the documented commands' own form."""
import copy
import re

import pytest
from helpers.workflow import dry_run
import yaml

from patchlens import config as C
from patchlens.cli import main
from patchlens.config import ROOT
from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore, expect_identity, write_features

TINY = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())


def _scenes(**kw):
    return lambda c: c["datasets"]["scenes"]["params"].update(kw)


def _rename(section, old, new):
    return lambda c: c[section].update({new: c[section].pop(old)})


CASES = [  # (edit, what the one line says)
    (lambda c: c["extraction"].update(batch_size=8.0), "extraction.batch_size = 8.0: expected integer"),
    (lambda c: c["datasets"]["scenes"].update(img_size=20000), "datasets.scenes.img_size = 20000"),
    (lambda c: c["datasets"]["scenes"].update(img_size=[96, 96.0]), "datasets.scenes.img_size"),
    (lambda c: c.update(variants=["raw", "raw"]), "variants = ['raw', 'raw']: expected a list without"),
    (lambda c: c.update(variants=[]), "variants = []: expected a list of 1"),
    (lambda c: c["tasks"]["retrieval"].update(variants=[]), "tasks.retrieval.variants = []"),
    (lambda c: c.update(variance={"split": []}), "variance.split = []"),
    (lambda c: c.update(variance={"split": ["trian"]}), "variance.split = ['trian']: data set 'scenes'"),
    (_scenes(n_train=-1), "datasets.scenes.params.n_train: -1 out of range"),
    (_scenes(n_frames=0), "datasets.scenes.params.n_frames"),
    (_scenes(n_val=2.5), "datasets.scenes.params.n_val: expected an integer, got 2.5"),
    (_scenes(n_trian=12), "datasets.scenes.params: unknown parameter(s) n_trian"),
    (_rename("models", "pixels", "zz/../tiny_vit"), "models: key 'zz/../tiny_vit' is not allowed"),
    (_rename("models", "pixels", ""), "models: key '' is not allowed"),
    (_rename("models", "pixels", ".pixels"), "models: key '.pixels' is not allowed"),
    (_rename("models", "pixels", "pix(1)"), "models: key 'pix(1)' is not allowed"),
    (_rename("datasets", "scenes", "a|b"), "datasets: key 'a|b' is not allowed"),
    (lambda c: c["models"]["pixels"].update(std=[0, 0, 0]), "models.pixels.std[2] = 0: expected a number > 0"),
    (lambda c: c["models"]["pixels"].update(std=[0.2, -1, 0.2]), "models.pixels.std[1] = -1"),
    (lambda c: c.update(gpu="maybe"), "gpu = 'maybe': expected boolean"),
]


@pytest.mark.parametrize("edit, line", CASES, ids=[line.split(" ")[0] for _, line in CASES])
def test_bad_config_exits_1_with_one_line_naming_the_key(tmp_path, capsys, edit, line):
    config = copy.deepcopy(TINY)
    edit(config)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", str(tmp_path / "c.yaml"), "--cpu-gflops", "1", "--read-mbps", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("patchlens: ") and line in err, err


def test_yaml_syntax_error_and_missing_file_are_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("datasets:\n  scenes: {source: scenes\nmodels: []\n")
    assert main(["plan", str(tmp_path / "c.yaml")]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(rf"patchlens: {re.escape(str(tmp_path / 'c.yaml'))}:3:7: not valid YAML "
                        r"\(.+\)\n", err), err
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 1
    assert capsys.readouterr().err == f"patchlens: {tmp_path / 'nope.yaml'}: config file not found\n"


@pytest.mark.parametrize("given, value", [
    ("true", True), ("True", True), ("yes", True), ("on", True), ("1", True), (1, True),
    ("false", False), ("FALSE", False), ("no", False), ("off", False), ("0", False), (0, False)])
def test_boolean_keys_accept_the_usual_spellings(given, value):
    config = copy.deepcopy(TINY)
    config.update(gpu=given, keep_features=given)
    config["models"]["tiny_vit"]["pretrained"] = given
    cfg = C.validate(config)
    assert cfg["gpu"] is value and cfg["keep_features"] is value
    assert cfg["models"]["tiny_vit"]["pretrained"] is value


def test_the_documented_gpu_command_dry_runs(tmp_path):
    """README's and docs/cluster.md's `--config gpu=true`, as written there, on the tiny config:
    the dry run accepts it and asks a GPU for the extraction jobs."""
    documented = set()
    for doc in ("README.md", "docs/cluster.md"):
        documented |= set(re.findall(r"^snakemake .*?(--config \S+)$",
                                     (ROOT / doc).read_text(), re.M))
    assert documented == {"--config gpu=true"}
    proc = dry_run(tmp_path, ROOT / "tests" / "configs" / "tiny.yaml", *documented.pop().split())
    assert proc.returncode == 0, proc.stderr[-2000:]
    extraction = proc.stdout.split("rule extract_features:")[1].split("\n\n")[0]
    assert re.search(r"resources: .*\bgpu=1\b", extraction), extraction


def test_a_feature_file_of_another_model_or_data_set_is_refused(tmp_path):
    import numpy as np

    path = tmp_path / "f.h5"
    write_features(path, np.zeros((2, 1, 4, 3), np.float16), ["a", "b"], (2, 2),
                   {"model": "m1", "dataset": "ds"})
    with FeatureStore(path) as store:
        expect_identity(store, "m1", "ds")
        for model, dataset in (("m2", "ds"), ("m1", "other")):
            with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: holds the features "
                                                r"of model 'm1' on data set 'ds', not of model "
                                                rf"'{model}' on '{dataset}'; delete it and rerun"):
                expect_identity(store, model, dataset)


def test_the_variant_grammar_has_one_definition():
    """The schema's pattern is the grammar of features/variants.py, and both refuse and accept
    the same spellings."""
    from patchlens.features.variants import VARIANT_PATTERN, parse_variant

    schema = yaml.safe_load(C.SCHEMA.read_text())
    assert schema["$defs"]["variant"]["pattern"] == f"^({VARIANT_PATTERN})$"
    for ok, parsed in (("raw", ("raw", 0)), ("zscore", ("zscore", 0)), ("drop12", ("drop", 12))):
        assert parse_variant(ok) == parsed
    for bad in ("drop", "Raw", "drop-1", "zscore1", "raw|drop1"):
        with pytest.raises(ConfigError):
            parse_variant(bad)
        assert not re.fullmatch(schema["$defs"]["variant"]["pattern"], bad)


@pytest.mark.parametrize("split, recorded, line", [
    (["trian"], "m", "variance.split = ['trian']: data set 'ds' has no split trian (its splits: "
                     "train, val); fix variance.split"),
    (["train"], "other", "holds the features of model 'other' on data set 'ds', not of model 'm' "
                         "on 'ds'; delete it and rerun"),
    (["train"], "m", None)])
def test_channel_variance_job_refuses_an_unknown_split_or_another_models_features(
        tmp_path, image_dataset, split, recorded, line):
    """At the job: a split the data set lacks (a config that does not show its splits) and a
    feature file recorded for another model end in one line naming the key or the file."""
    import runpy
    from types import SimpleNamespace

    import numpy as np

    feats = tmp_path / "f.h5"
    write_features(feats, np.ones((4, 1, 12, 3), np.float16), [f"im{i}" for i in range(4)],
                   (3, 4), {"model": recorded, "dataset": "ds"})
    log = tmp_path / "job.log"
    snakemake = SimpleNamespace(
        wildcards=SimpleNamespace(model="m", dataset="ds"), params=SimpleNamespace(split=split),
        input=SimpleNamespace(manifest=str(image_dataset / "manifest.csv"), features=str(feats)),
        output=[str(tmp_path / "v.h5")], log=[str(log)])
    script = str(ROOT / "scripts" / "channel_variance.py")
    if line is None:
        runpy.run_path(script, {"snakemake": snakemake})
        assert (tmp_path / "v.h5").exists()
        return
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(script, {"snakemake": snakemake})
    assert exit_.value.code == 1 and not (tmp_path / "v.h5").exists()
    text = log.read_text()
    assert line in text and text.count("\n") == 1, text
