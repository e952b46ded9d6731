"""Bad parameter VALUES are refused when the workflow starts (issue 12, cases 4 and 8): one line
naming the full config key, the value and what is allowed, from ``validate()`` -- which the
Snakefile runs -- and once through a real ``snakemake -n``."""
import copy

import pytest
from helpers.workflow import dry_run
import yaml

from patchlens.models.layers import check_layers, select_layers
from patchlens.config import ROOT
from patchlens.startup import validate
from patchlens.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    return yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())


def _refused(config, edit) -> str:
    config = copy.deepcopy(config)
    edit(config)
    with pytest.raises(ConfigError) as err:
        validate(config)
    msg = str(err.value)
    assert "\n" not in msg and "$defs" not in msg and "properties" not in msg
    return msg


def _fewshot(**kw):
    return lambda c: c["tasks"]["fewshot_seg"].setdefault("params", {}).update(kw)


CASES = [  # (edit, the message must contain) -- the cases listed in issue 12
    (_fewshot(k="20"), "tasks.fewshot_seg.params.k = '20': expected an integer >= 1"),
    (_fewshot(k=0), "tasks.fewshot_seg.params.k = 0: expected an integer >= 1"),
    (_fewshot(seeds=3), "tasks.fewshot_seg.params.seeds = 3: expected a non-empty list"),
    (_fewshot(n_shots=True), "tasks.fewshot_seg.params.n_shots = True: expected an integer >= 1"),
    (_fewshot(max_void="abc"), "tasks.fewshot_seg.params.max_void = 'abc': expected a number "
                               "in 0..1"),
    (lambda c: c["tasks"]["lowshot_cls"]["params"].update(n_shots=[1, True]),
     "tasks.lowshot_cls.params.n_shots = [1, True]"),
    (lambda c: c["tasks"]["retrieval"].setdefault("params", {}).update(scale_bins=["a", "b"]),
     "tasks.retrieval.params.scale_bins = ['a', 'b']: expected at least two increasing edges"),
    (lambda c: c["tasks"]["tracking"].setdefault("params", {}).update(topk=0),
     "tasks.tracking.params.topk: expected an integer >= 1, got 0"),
    (lambda c: c["tasks"]["keypoints"].setdefault("params", {}).update(alphas=[]),
     "tasks.keypoints.params.alphas"),
    (lambda c: c["tasks"]["instance_id"].setdefault("params", {}).update(split=3),
     "tasks.instance_id.params.split = 3: expected a split name"),
    (lambda c: c["analyses"]["attention"].update(params={"offset_heads": {"min_share": "x"}}),
     "analyses.attention.params.offset_heads.min_share = 'x': expected a number"),
    (lambda c: c["analyses"]["attention"].update(params={"max_images": 0}),
     "analyses.attention.params.max_images = 0: expected an integer >= 1"),
    (lambda c: c["analyses"]["cka"].update(params={"batch_size": 2}),
     "analyses.cka.params.batch_size = 2"),
    # models: facts of the architecture, read on the meta device
    (lambda c: c.update(variants=["raw", "drop999"]),
     "variants: drop999 on model 'tiny_vit' with 48 channels; expected drop<k> with k <= 47"),
    (lambda c: (c["tasks"]["retrieval"].update(variants=["drop768"]), c["models"].pop("tiny_vit")),
     "tasks.retrieval.variants: drop768 on model 'pixels' with 768 channels; expected drop<k> "
     "with k <= 767"),
    (lambda c: c["models"]["tiny_vit"].update(timm="vit_no_such_model_patch16"),
     "models.tiny_vit.timm: 'vit_no_such_model_patch16' is not a timm architecture"),
    (lambda c: c["models"]["tiny_vit"]["kwargs"].update(embed_dim=50),
     "models.tiny_vit.kwargs = {'depth': 3, 'embed_dim': 50, 'num_heads': 3}: timm cannot "
     "build 'vit_tiny_patch16_224' with them (AssertionError"),
    (lambda c: c["models"]["tiny_vit"]["kwargs"].update(colour="red"),
     "models.tiny_vit.kwargs = "),
    (lambda c: c["models"]["tiny_vit"].update(layers=[99, 4, -1]),
     "models.tiny_vit.layers = [99, 4, -1]: the model has 3 blocks; expected block indices in "
     "-3..2"),
    (lambda c: c["models"]["tiny_vit"].update(layers=[-4]), "models.tiny_vit.layers = [-4]"),
    (lambda c: c["analyses"]["attention"].update(params={"layers": [3]}),
     "analyses.attention.params.layers = [3]: model 'tiny_vit' has 3 blocks; expected block "
     "indices in 0..2"),
    (lambda c: c["datasets"]["scenes"].update(img_size=[96, 20]),
     "datasets.scenes.img_size = [96, 20]: model 'tiny_vit' (patch size 16) gets a 6x1 patch "
     "grid; expected at least 2x2"),
    # schema errors: the entry, never the schema
    (lambda c: c["datasets"]["scenes"].update(img_size=4),
     "datasets.scenes.img_size = 4: expected "),
    (lambda c: c["models"]["pixels"].update(mean=[0.5, 0.5]),
     "models.pixels.mean = [0.5, 0.5]: expected a list of 3 items"),
    (lambda c: c["models"]["pixels"].update(baseline="edges"),
     "models.pixels.baseline = 'edges': expected one of pixels, oracle"),
    (lambda c: c["models"]["pixels"].update(timm="vit_tiny_patch16_224"),
     "models.pixels: expected exactly one of timm, baseline"),
    (lambda c: c["models"]["pixels"].update(colour=1), "models.pixels: unknown entry colour"),
    (lambda c: c.update(variants=["drop"]), "variants[0] = 'drop': expected text matching"),
    (lambda c: c["extraction"].update(batch_size=0),
     "extraction.batch_size = 0: expected an integer >= 1"),
]


@pytest.mark.parametrize("edit, message", CASES, ids=[m.split(":")[0][:50] for _, m in CASES])
def test_bad_value_is_refused_naming_the_key(tiny, edit, message):
    assert message in _refused(tiny, edit)


def test_the_tiny_config_itself_passes(tiny):
    validate(copy.deepcopy(tiny))


@pytest.mark.parametrize("n_blocks", [1, 3, 12])
def test_layers_in_range_are_kept_and_out_of_range_refused(n_blocks):
    every = list(range(-n_blocks, n_blocks))
    # negative indices count from the end, as in Python: the same block as i + n_blocks
    assert select_layers(every, n_blocks) == list(range(n_blocks))
    assert select_layers([-1], n_blocks) == [n_blocks - 1]
    for bad in (n_blocks, -n_blocks - 1, 99):
        with pytest.raises(ConfigError, match=rf"models.m.layers = \[{bad}\]: the model has "
                                              rf"{n_blocks} blocks"):
            select_layers([bad], n_blocks, "models.m.layers")
    with pytest.raises(ConfigError, match="expected block indices"):
        check_layers([1.5], n_blocks, "x")


def test_dry_run_fails_before_any_job_naming_the_key(tmp_path, tiny):
    config = copy.deepcopy(tiny)
    config["tasks"]["fewshot_seg"]["params"]["k"] = "20"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = dry_run(tmp_path, tmp_path / "config.yaml")
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1
    assert out == ["patchlens: tasks.fewshot_seg.params.k = '20': expected an integer >= 1"]
    assert not (tmp_path / "results").exists()  # nothing prepared, nothing extracted
