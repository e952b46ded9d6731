import hashlib

import numpy as np
import pytest
import timm
import torch
import xarray as xr

from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError, WeightsError
from patchlens.features.extract import extract, load_batch, pixel_tokens
from patchlens.features.store import FeatureStore
from patchlens.models.resolve import build_timm, input_size, resolve_model

TINY = {"timm": "vit_tiny_patch16_224", "pretrained": False,
        "kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3}}


def test_resolve_reads_architecture_facts_without_weights():
    spec = resolve_model("tiny", TINY)
    assert (spec["patch_size"], spec["n_blocks"], spec["has_cls"]) == (16, 3, True)
    dino = resolve_model("d", {"timm": "vit_small_patch14_dinov2.lvd142m"})
    assert dino["patch_size"] == 14 and dino["n_blocks"] == 12
    reg = resolve_model("r", {"timm": "vit_small_patch14_reg4_dinov2.lvd142m"})
    assert reg["num_prefix_tokens"] == 5
    with pytest.raises(ConfigError, match="models.bad.timm"):
        resolve_model("bad", {"timm": "not_a_model"})
    assert input_size(224, 14) == (224, 224) and input_size([480, 854], 16) == (480, 848)


def test_tiny_vit_extraction_equals_one_forward_pass(tmp_path, image_dataset):
    spec = resolve_model("tiny", TINY)
    ds = Dataset(image_dataset)
    out = tmp_path / "f.h5"
    extract(spec, ds, out, img_size=[48, 64], batch_size=3, progress=False)
    x = xr.open_dataset(out, engine="h5netcdf")
    assert x["tokens"].shape == (4, 4, 12, 48)   # 3 blocks + the final-norm entry
    assert x["tokens"].dtype == np.float16
    assert x.attrs["model"] == "tiny" and list(x.attrs["grid"]) == [3, 4]
    assert len(x.attrs["weights_sha256"]) == 64
    # reference: the same model called directly on the same normalised images
    model = build_timm(spec)
    batch = torch.from_numpy(load_batch(ds, ds.images, (48, 64), spec["mean"], spec["std"]))
    with torch.no_grad():
        ref = model.forward_intermediates(batch, indices=[0, 1, 2], return_prefix_tokens=True,
                                          output_fmt="NLC", intermediates_only=True)
    with FeatureStore(out) as s:
        for li in range(3):
            got = s.tokens(li).reshape(4, 12, 48)
            np.testing.assert_allclose(got, ref[li][0].numpy(), rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(s.cls(li), ref[li][1][:, 0].numpy(), rtol=2e-3, atol=2e-3)


def test_pixels_baseline_is_the_patch_pixels(tmp_path, image_dataset):
    spec = resolve_model("pixels", {"baseline": "pixels", "patch_size": 16})
    ds = Dataset(image_dataset)
    extract(spec, ds, tmp_path / "p.h5", img_size=[48, 64], progress=False)
    x = load_batch(ds, ["im2"], (48, 64), spec["mean"], spec["std"])[0]   # (3, 48, 64)
    with FeatureStore(tmp_path / "p.h5") as s:
        t = s.tokens(0, ["im2"])[0]                                        # (3, 4, 768)
    patch = x[:, 16:32, 48:64].transpose(1, 2, 0).reshape(-1)              # row 1, column 3
    np.testing.assert_allclose(t[1, 3], patch, atol=2e-2, rtol=1e-2)
    assert pixel_tokens(np.zeros((2, 3, 32, 48)), 16).shape == (2, 1, 6, 768)


def _save_checkpoint(tmp_path, prefix="module.backbone."):
    torch.manual_seed(3)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            **TINY["kwargs"])
    state = {"teacher": {prefix + k: v for k, v in src.state_dict().items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    return src, path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_weights_with_sha256_and_key_map(tmp_path):
    src, path, digest = _save_checkpoint(tmp_path)
    entry = {**TINY, "pretrained": True, "weights": str(path), "sha256": digest,
             "key_map": {"module.backbone.": ""}}
    model = build_timm(resolve_model("ck", entry), tmp_path / "w")
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    with pytest.raises(WeightsError, match="does not match its sha256"):
        build_timm(resolve_model("ck", {**entry, "sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="fix 'key_map:'"):
        build_timm(resolve_model("ck", {**entry, "key_map": {}}))
    with pytest.raises(WeightsError, match="not found"):
        build_timm(resolve_model("ck", {**entry, "weights": str(tmp_path / "missing.pth")}))


def test_uncached_hub_weights_fail_with_one_line(monkeypatch):
    import patchlens.models.resolve as reg

    monkeypatch.setattr(reg, "_online", lambda *a, **k: False)
    with pytest.raises(WeightsError) as err:
        build_timm(resolve_model("dino", {"timm": "vit_small_patch16_224.dino"}))
    msg = str(err.value)
    assert "\n" not in msg and "'dino'" in msg and "weights:" in msg


def test_norm_entry_equals_timm_forward_features(tmp_path, image_dataset, monkeypatch):
    """layer n_blocks = timm's forward_features (final norm applied), prefix tokens split off."""
    spec = resolve_model("tiny", TINY)
    ds = Dataset(image_dataset)
    out = tmp_path / "f.h5"
    extract(spec, ds, out, img_size=[48, 64], batch_size=3, progress=False)
    model = build_timm(spec)
    torch.manual_seed(0)
    for p in model.norm.parameters():   # random-init norm is (1, 0); make the affine part matter
        p.data.normal_()
    batch = torch.from_numpy(load_batch(ds, ds.images, (48, 64), spec["mean"], spec["std"]))
    with torch.no_grad():
        ref_block = model.forward_intermediates(batch, indices=[2], output_fmt="NLC",
                                                intermediates_only=True)[0]
    out2 = tmp_path / "g.h5"
    import patchlens.models.resolve as reg
    monkeypatch.setattr(reg, "build_timm", lambda *a, **k: model)
    extract(spec, ds, out2, img_size=[48, 64], batch_size=3, progress=False)
    with torch.no_grad():
        ref = model.forward_features(batch)                       # (4, 1 + 12, 48)
    with FeatureStore(out2) as s:
        assert s.layers == [0, 1, 2, 3] and s.norm_layer == 3
        assert s.attrs["final_norm"] == 1 and s.attrs["norm_layer"] == 3
        np.testing.assert_allclose(s.tokens(3).reshape(4, 12, 48), ref[:, 1:].numpy(),
                                   rtol=5e-3, atol=5e-3)
        np.testing.assert_allclose(s.cls(3), ref[:, 0].numpy(), rtol=5e-3, atol=5e-3)
        # the norm entry is not the last block: the test would fail if the norm were skipped
        assert np.abs(s.tokens(3).reshape(4, 12, 48) - ref_block.numpy()).max() > 0.1
        # LayerNorm reading each layer: blocks[l+1].norm1, the final norm for the last block
        w, b = s.variable("ln_weight"), s.variable("ln_bias")
        np.testing.assert_allclose(w[1], model.blocks[2].norm1.weight.detach().numpy())
        np.testing.assert_allclose(w[2], model.norm.weight.detach().numpy())
        np.testing.assert_allclose(b[2], model.norm.bias.detach().numpy())
        assert s.attrs["ln_layers"] == [0, 1, 2, -1]
    with FeatureStore(out) as s:    # the random-init file also holds the entry
        assert s.layers == [0, 1, 2, 3]


def test_no_norm_entry_without_final_norm_or_last_block(tmp_path, image_dataset):
    ds = Dataset(image_dataset)
    # timm's fc_norm configuration (global_pool avg): model.norm is Identity
    spec = resolve_model("gap", {**TINY, "kwargs": {**TINY["kwargs"], "global_pool": "avg",
                                                     "fc_norm": True}})
    extract(spec, ds, tmp_path / "a.h5", img_size=[48, 64], progress=False)
    with FeatureStore(tmp_path / "a.h5") as s:
        assert s.layers == [0, 1, 2] and s.norm_layer is None
        assert s.attrs["final_norm"] == 0 and s.attrs["norm_layer"] == -1
    # last block not selected: no norm entry
    spec = resolve_model("tiny", TINY)
    extract(spec, ds, tmp_path / "b.h5", img_size=[48, 64], layers=[0, 1], progress=False)
    with FeatureStore(tmp_path / "b.h5") as s:
        assert s.layers == [0, 1] and s.norm_layer is None
    # baselines: one entry, no norm
    extract(resolve_model("pixels", {"baseline": "pixels", "patch_size": 16}), ds,
            tmp_path / "p.h5", img_size=[48, 64], progress=False)
    with FeatureStore(tmp_path / "p.h5") as s:
        assert s.layers == [0] and s.norm_layer is None


@pytest.mark.parametrize("kwargs", [{"reg_tokens": 2}, {"class_token": False, "global_pool": "avg",
                                                        "fc_norm": False}])
def test_norm_entry_with_register_tokens_or_without_class_token(kwargs):
    """forward_layers' norm entry = forward_features with every prefix token dropped (registers
    too); the class token, where there is one, is forward_features' token 0."""
    from patchlens.features.extract import forward_layers

    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                              dynamic_img_size=True, **TINY["kwargs"], **kwargs).eval()
    for p in model.norm.parameters():
        p.data.normal_()
    x = torch.randn(2, 3, 32, 48)
    has_cls = model.cls_token is not None
    with torch.no_grad():
        tok, cls = forward_layers(model, x, [1, 2], has_cls, norm=True)
        ref = model.forward_features(x)
    assert tok.shape == (2, 3, 6, 48)
    np.testing.assert_allclose(tok[:, 2], ref[:, model.num_prefix_tokens:].numpy(),
                               rtol=5e-3, atol=5e-3)
    if has_cls:
        np.testing.assert_allclose(cls[:, 2], ref[:, 0].numpy(), rtol=5e-3, atol=5e-3)
    else:
        assert cls is None
