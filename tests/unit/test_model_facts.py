"""Model facts have one home (issue 19.4): ``models.resolve.resolve_model`` gives every fact the
start-up check, extraction and the plan need -- blocks, channels, patch size, prefix tokens, final
norm, MLP width -- for timm models (read on the meta device) and the baselines; checked here
against a real build of the same architecture and against what extraction writes."""
import numpy as np
import pytest
import timm
import torch

from patchlens.features.extract import pixel_tokens
from patchlens.models.resolve import resolve_model

TINY = {"timm": "vit_tiny_patch16_224", "pretrained": False,
        "kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3}}


@pytest.mark.parametrize("kwargs", [
    {"depth": 3, "embed_dim": 48, "num_heads": 3},
    {"depth": 2, "embed_dim": 48, "num_heads": 3, "mlp_ratio": 2.5, "reg_tokens": 2},
    {"depth": 2, "embed_dim": 48, "num_heads": 3, "global_pool": "avg"},  # fc_norm: no final norm
])
def test_timm_facts_equal_a_real_build(kwargs):
    spec = resolve_model("m", {"timm": "vit_tiny_patch16_224", "pretrained": False,
                               "kwargs": kwargs})
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 48), **kwargs)
    x = torch.zeros(1, 3, 32, 48)
    with torch.no_grad():
        tokens = m.forward_features(x)  # (1, prefix + patches, C)
    assert spec["n_blocks"] == len(m.blocks) and spec["channels"] == tokens.shape[-1]
    assert spec["num_prefix_tokens"] == tokens.shape[1] - (32 // 16) * (48 // 16)
    assert spec["mlp_hidden"] == m.blocks[0].mlp.fc1.weight.shape[0]
    assert spec["final_norm"] == (not isinstance(m.norm, torch.nn.Identity))
    assert spec["patch_size"] == 16


def test_baseline_facts_match_what_extraction_writes():
    pixels = resolve_model("p", {"baseline": "pixels", "patch_size": 8})
    x = np.zeros((1, 3, 16, 24), np.float32)
    assert pixels["channels"] == pixel_tokens(x, 8).shape[-1] and pixels["n_blocks"] == 1
    oracle = resolve_model("o", {"baseline": "oracle", "patch_size": 16})
    assert oracle["channels"] is None  # the data set's class count, known at its job
