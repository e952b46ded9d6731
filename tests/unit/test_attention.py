"""Attention capture on real (tiny, random-init) timm ViTs."""
import pytest
import torch
import timm

from patchlens.errors import ConfigError
from patchlens.models.attention import AttentionCapture, attention_modules


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, embed_dim=48,
                             num_heads=3, img_size=64, dynamic_img_size=True)


def _reference_attention(attn_module, x):
    """softmax(q k^T / sqrt(d)) from the block's qkv weights, computed by hand."""
    B, N, C = x.shape
    H = attn_module.num_heads
    qkv = x @ attn_module.qkv.weight.T + attn_module.qkv.bias
    q, k, _ = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) / (C // H) ** 0.5
    return torch.softmax(logits, dim=-1)


def test_capture_equals_hand_computed_reference_and_leaves_model_unchanged():
    model = _vit()
    model.train()  # the capture must switch to eval and restore this afterwards
    model.blocks[1].training = False  # a mixed state must be restored exactly
    fused_before = [m.fused_attn for m in attention_modules(model)]
    x = torch.randn(2, 3, 64, 80)  # non-square input: grid 4 x 5, dynamic_img_size

    inputs = {}
    handles = [blk.attn.register_forward_pre_hook(
        lambda mod, args, i=i: inputs.__setitem__(i, args[0].detach()))
        for i, blk in enumerate(model.blocks)]
    with torch.no_grad():
        model.eval()
        out_plain = model(x)
        model.train()
        model.blocks[1].training = False
        with AttentionCapture(model) as cap:
            out_cap = model(x)
            maps = list(cap.maps)
    for h in handles:
        h.remove()

    assert len(maps) == 2
    for i, a in enumerate(maps):
        assert a.shape == (2, 3, 1 + 4 * 5, 1 + 4 * 5)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 21), atol=1e-5, rtol=0)
        ref = _reference_attention(model.blocks[i].attn, inputs[i])
        torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_cap, out_plain, atol=1e-5, rtol=1e-4)
    # restored: fused flags, hooks, train/eval flags
    assert [m.fused_attn for m in attention_modules(model)] == fused_before
    assert all(len(m.attn_drop._forward_hooks) == 0 for m in attention_modules(model))
    assert len(model._forward_pre_hooks) == 0
    assert model.training and model.blocks[0].training and not model.blocks[1].training


def test_callback_receives_each_layer_and_no_maps_are_kept():
    model = _vit()
    seen = []
    with AttentionCapture(model, on_map=lambda layer, a: seen.append((layer, a.shape))) as cap:
        with torch.inference_mode():
            model(torch.randn(3, 3, 64, 64))
        assert cap.maps == [None, None]
    assert seen == [(0, (3, 3, 17, 17)), (1, (3, 3, 17, 17))]


def test_maps_of_the_previous_forward_are_dropped():
    model = _vit()
    with AttentionCapture(model) as cap, torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
        model(torch.randn(2, 3, 32, 32))
        assert [a.shape[0] for a in cap.maps] == [2, 2]
        assert cap.maps[0].shape[-1] == 1 + 2 * 2


def test_fused_restored_after_an_exception():
    model = _vit()
    with pytest.raises(RuntimeError):
        with AttentionCapture(model):
            raise RuntimeError("boom")
    assert all(m.fused_attn == timm.layers.use_fused_attn() for m in attention_modules(model))
    assert all(len(m.attn_drop._forward_hooks) == 0 for m in attention_modules(model))


def test_dinov2_register_tokens():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, depth=2,
                              embed_dim=48, num_heads=3, img_size=56, dynamic_img_size=True)
    assert model.num_prefix_tokens == 5
    with AttentionCapture(model) as cap, torch.no_grad():
        model.forward_features(torch.randn(2, 3, 56, 70))
        maps = list(cap.maps)
    assert len(maps) == 2
    for a in maps:
        assert a.shape == (2, 3, 5 + 4 * 5, 5 + 4 * 5)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 25), atol=1e-5, rtol=0)


def test_beit_relative_position_bias_path():
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", pretrained=False, depth=2, embed_dim=48,
                              num_heads=3, img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        out_plain = model(x)
        with AttentionCapture(model) as cap:
            out_cap = model(x)
            maps = list(cap.maps)
    torch.testing.assert_close(out_cap, out_plain, atol=1e-5, rtol=1e-4)
    assert len(maps) == 2
    for a in maps:
        assert a.shape == (2, 3, 17, 17)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 17), atol=1e-5, rtol=0)


def test_unsupported_model_names_the_problem():
    with pytest.raises(ConfigError, match="blocks"):
        AttentionCapture(torch.nn.Linear(2, 2))
