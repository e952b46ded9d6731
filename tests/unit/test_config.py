import copy

import pytest
import yaml

from patchlens.config import ROOT, analysis_params, evaluation_jobs, task_params
from patchlens.startup import load_config, validate
from patchlens.errors import ConfigError


@pytest.fixture
def demo():
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def test_demo_and_tiny_configs_validate_and_fill_defaults(demo):
    cfg = validate(copy.deepcopy(demo))
    assert cfg["extraction"]["batch_size"] == 16 and cfg["gpu"] is False
    assert load_config(ROOT / "tests" / "configs" / "tiny.yaml")["variants"] == ["raw", "drop1"]
    jobs = evaluation_jobs(cfg)
    # the oracle is limited to scenes; tracking and keypoints run on raw features only
    assert ("tracking", "oracle", "scenes", "raw") in jobs
    assert ("tracking", "pixels", "scenes", "zscore") not in jobs
    assert ("depth", "oracle", "scenes", "raw") in jobs
    # 4 models; fewshot_seg on raw and drop4 only; tracking, keypoints, hummingbird, depth on raw
    assert len(jobs) == 4 * (3 * 4 + 2 + 2 + 1 + 1)


def test_task_and_analysis_params_fill_defaults_and_reject_unknown_names(demo):
    cfg = validate(copy.deepcopy(demo))
    assert task_params(cfg, "fewshot_seg")["k"] == 20
    assert analysis_params(cfg, "attention")["max_images"] == 64
    assert analysis_params(cfg, "cka")["batch_size"] == 256
    bad = copy.deepcopy(demo)
    bad["tasks"]["fewshot_seg"]["params"] = {"kk": 3}
    with pytest.raises(ConfigError, match=r"tasks.fewshot_seg.params: unknown parameter\(s\) kk"):
        validate(bad)
    bad = copy.deepcopy(demo)
    bad["analyses"]["attention"]["params"] = {"max_imgs": 3}
    with pytest.raises(ConfigError, match="analyses.attention.params: unknown parameter"):
        validate(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tasks"]["tracking"].update(datasets=["davis"]), "tasks.tracking.datasets: unknown data set 'davis'"),
    (lambda c: c["models"]["oracle"].update(datasets=["voc"]), "models.oracle.datasets: unknown data set 'voc'"),
    (lambda c: c["models"]["pixels"].update(baseline="edges"), "config does not match"),
    (lambda c: c.update(variants=["drop"]), "config does not match"),
    (lambda c: c["datasets"]["scenes"].update(source="coco"), "config does not match"),
])
def test_bad_config_gives_one_line_naming_the_key(demo, edit, message):
    edit(demo)
    with pytest.raises(ConfigError) as err:
        validate(demo)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
