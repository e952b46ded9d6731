"""merge_params: defaults filled in, unknown keys named with the config location."""
import pytest

from patchlens.analysis.attention_stats import attention_statistics
from patchlens.analysis.cka import cka_params
from patchlens.analysis.offset_heads import offset_params
from patchlens.errors import ConfigError
from patchlens.params import merge_params
from patchlens.tasks import fewshot_seg, instance_id, keypoints, lowshot_cls, retrieval, tracking

DEFAULT_PARAMS = {"k": 10, "seeds": [0, 1]}


def test_given_values_override_defaults_and_inputs_stay_unchanged():
    given = {"k": 3}
    out = merge_params(given, DEFAULT_PARAMS, "tasks.x.params")
    assert out == {"k": 3, "seeds": [0, 1]}
    assert given == {"k": 3} and DEFAULT_PARAMS == {"k": 10, "seeds": [0, 1]}
    assert merge_params(None, DEFAULT_PARAMS, "w") == DEFAULT_PARAMS
    assert merge_params({}, DEFAULT_PARAMS, "w") is not DEFAULT_PARAMS


def test_unknown_keys_named_sorted_with_the_known_ones():
    with pytest.raises(ConfigError) as err:
        merge_params({"zz": 1, "kk": 2, "k": 1}, DEFAULT_PARAMS, "tasks.x.params")
    assert str(err.value) == "tasks.x.params: unknown parameter(s) kk, zz; known: k, seeds"


@pytest.mark.parametrize("check,where", [
    (fewshot_seg.check_params, "tasks.fewshot_seg.params"),
    (lambda p: instance_id.run(None, None, None, p), "tasks.instance_id.params"),
    (retrieval.check_params, "tasks.retrieval.params"),
    (lowshot_cls.check_params, "tasks.lowshot_cls.params"),
    (tracking.check_params, "tasks.tracking.params"),
    (keypoints.check_params, "tasks.keypoints.params"),
    (cka_params, "analyses.cka.params"),
    (offset_params, "analyses.attention.params.offset_heads"),
    (lambda p: attention_statistics(None, [], 16, (2, 2), 1, p), "analyses.attention.params"),
])
def test_every_task_and_analysis_names_its_config_location(check, where):
    """Unknown keys fail before any data, model or torch is touched (the stand-ins are None)."""
    with pytest.raises(ConfigError, match=rf"^{where}: unknown parameter\(s\) typo; known: "):
        check({"typo": 1})
