"""The real study's model zoo (``config.yaml``).

* the config validates (schema, cross-references, task parameter names);
* every timm architecture resolves (``resolve_model`` builds it on the meta device: no weights);
* every checkpoint timm does not host maps onto its timm architecture. The official checkpoints
  are not downloaded: each one's key list (with shapes) is rebuilt here from the official code
  (cited per model), wrapped the way the official script saves it, and sent through the
  loader's own ``unwrap`` + ``remap_keys`` with the config's ``state_key`` / ``key_map``. The
  result must hold every key of the timm architecture with the same shape (classifier heads may
  be missing) and nothing else. Where the official naming differs beyond a prefix (extra
  decoders, heads, momentum encoders, no class token, shared relative position bias) the
  difference is written out below.

All models are built under ``torch.device("meta")`` (no memory, no download), so the file runs
in a few seconds. The official key lists are described independently of timm: a wrong ``kwargs``
or ``key_map`` in the config, or a timm renaming, makes these tests fail.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from patchlens.startup import load_config  # noqa: E402
from patchlens.models.resolve import resolve_model  # noqa: E402
from patchlens.models.weights import remap_keys, unwrap  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
HEADS = ("head.", "fc_norm.")  # classifier parts a backbone checkpoint may lack (weights.py)
FAMILIES = {"contrastive", "mim", "language", "supervised"}
VARIANTS = {"raw", "zscore", "drop1", "drop2", "drop4", "drop8", "drop16"}


@pytest.fixture(scope="module")
def config():
    return load_config(CONFIG)


def _models(kind: str) -> list[str]:
    """Model keys of config.yaml (read without validation, for parametrisation)."""
    import yaml

    models = yaml.safe_load(CONFIG.read_text())["models"]
    if kind == "timm":
        return [k for k, e in models.items() if "timm" in e]
    if kind == "weights":
        return [k for k, e in models.items() if e.get("weights")]
    if kind == "hub":
        return [k for k, e in models.items() if "timm" in e and not e.get("weights")]
    raise ValueError(kind)


def meta_state(name: str, **kwargs) -> dict[str, tuple]:
    """{state-dict key: shape} of a timm model built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- the official architectures, written out from their source code -------------------------------

def vit_block(prefix: str, dim: int, mlp_ratio: int = 4) -> dict[str, tuple]:
    """One pre-norm ViT block as in DINO / iBOT / SelfPatch ``vision_transformer.py`` and the
    timm 0.3-0.4 ``Block`` that MoCo v3 and Scale-MAE import: norm1, attn.qkv (bias),
    attn.proj, norm2, mlp.fc1, mlp.fc2."""
    h = dim * mlp_ratio
    return {f"{prefix}norm1.weight": (dim,), f"{prefix}norm1.bias": (dim,),
            f"{prefix}attn.qkv.weight": (3 * dim, dim), f"{prefix}attn.qkv.bias": (3 * dim,),
            f"{prefix}attn.proj.weight": (dim, dim), f"{prefix}attn.proj.bias": (dim,),
            f"{prefix}norm2.weight": (dim,), f"{prefix}norm2.bias": (dim,),
            f"{prefix}mlp.fc1.weight": (h, dim), f"{prefix}mlp.fc1.bias": (h,),
            f"{prefix}mlp.fc2.weight": (dim, h), f"{prefix}mlp.fc2.bias": (dim,)}


def vit_backbone(dim: int, depth: int, patch: int = 16, grid: int = 14, cls: bool = True,
                 final_norm: bool = True, prefix: str = "") -> dict[str, tuple]:
    """A DINO-style ViT backbone (facebookresearch/dino vision_transformer.py, which iBOT copies
    and SelfPatch modifies): patch_embed.proj conv, cls_token, pos_embed over (cls +) grid^2
    tokens, blocks, final norm; the classifier head is nn.Identity (no keys)."""
    n = grid * grid + (1 if cls else 0)
    out = {f"{prefix}patch_embed.proj.weight": (dim, 3, patch, patch),
           f"{prefix}patch_embed.proj.bias": (dim,), f"{prefix}pos_embed": (1, n, dim)}
    if cls:
        out[f"{prefix}cls_token"] = (1, 1, dim)
    for i in range(depth):
        out |= vit_block(f"{prefix}blocks.{i}.", dim)
    if final_norm:
        out |= {f"{prefix}norm.weight": (dim,), f"{prefix}norm.bias": (dim,)}
    return out


def bn(prefix: str, n: int, affine: bool = True) -> dict[str, tuple]:
    out = {f"{prefix}running_mean": (n,), f"{prefix}running_var": (n,),
           f"{prefix}num_batches_tracked": ()}
    if affine:
        out |= {f"{prefix}weight": (n,), f"{prefix}bias": (n,)}
    return out


def moco_mlp(prefix: str, layers: int, dim_in: int, hidden: int, dim_out: int) -> dict:
    """MoCo v3 ``_build_mlp`` (moco/builder.py): [Linear(no bias), BN, ReLU] * (layers - 1),
    then Linear(no bias), BN(affine=False); Sequential indices count the ReLUs."""
    out, idx = {}, 0
    for layer in range(layers):
        d1 = dim_in if layer == 0 else hidden
        d2 = dim_out if layer == layers - 1 else hidden
        out[f"{prefix}{idx}.weight"] = (d2, d1)
        out |= bn(f"{prefix}{idx + 1}.", d2, affine=layer < layers - 1)
        idx += 3 if layer < layers - 1 else 2
    return out


def official_mocov3_b16() -> dict:
    """MoCo v3 ViT-B/16 300ep (main_moco.py save_checkpoint): {'state_dict': DDP(MoCo_ViT)
    keys, 'optimizer', 'epoch', 'arch', 'scaler'}. MoCo_ViT holds base_encoder (vits.vit_base:
    timm ViT names, fixed sin-cos pos_embed stored as a parameter) whose head is replaced by a
    3-layer MLP (hidden 4096, out 256), a momentum_encoder copy, and a 2-layer predictor."""
    enc = vit_backbone(768, 12) | moco_mlp("head.", 3, 768, 4096, 256)
    state = {f"module.base_encoder.{k}": v for k, v in enc.items()}
    state |= {f"module.momentum_encoder.{k}": v for k, v in enc.items()}
    state |= {f"module.{k}": v for k, v in moco_mlp("predictor.", 2, 256, 4096, 256).items()}
    return {"state_dict": state, "optimizer": {}, "epoch": 300, "arch": "vit_base", "scaler": {}}


def official_ibot(dim: int) -> dict:
    """iBOT backbone (t) file = extract_backbone_weights.py output: {'state_dict': teacher
    backbone with 'backbone.' stripped}; the teacher ViT has no masked_embed (only the student
    is built with masked_im_modeling) and an Identity head (models/vision_transformer.py)."""
    return {"state_dict": vit_backbone(dim, 12)}


def official_scalemae_l16(independent_fcn_head: bool = True,
                          project_pos_emb: bool = False) -> dict:
    """Scale-MAE ViT-L/16 (scalemae/util/misc.py save_model): {'model', 'optimizer', 'epoch',
    'scaler', 'args'}. 'model' = MaskedAutoencoderViT (scalemae/models_mae.py, decoder 512 wide):
    the encoder in timm names (cls_token, fixed sin-cos pos_embed, patch_embed, blocks, norm)
    plus decoder_embed, mask_token, mask_token_decoder, decoder_pos_embed, optional
    pos_emb_projection, fpn, fcn or fcn_high + fcn_low, decoder_blocks, decoder_norm. Only the
    top-level names of the decoder modules matter for the mapping; the inner keys of fpn / fcn
    below are placeholders (lib/fpn.py is not modelled)."""
    d = 512
    model = vit_backbone(1024, 24)
    model |= {"decoder_embed.weight": (d, 1024), "decoder_embed.bias": (d,),
              "mask_token": (1, 1, d), "mask_token_decoder": (1, 1, d),
              "decoder_pos_embed": (1, 197, d),
              "decoder_norm.weight": (d,), "decoder_norm.bias": (d,),
              "fpn.fpn1.0.weight": (d, d, 2, 2), "fpn.fpn1.0.bias": (d,)}
    for i in range(8):
        model |= vit_block(f"decoder_blocks.{i}.", d)
    heads = ("fcn_high.", "fcn_low.") if independent_fcn_head else ("fcn.",)
    for h in heads:
        model |= {f"{h}conv.0.weight": (256, d, 3, 3), f"{h}conv.0.bias": (256,)}
    if project_pos_emb:
        model |= {"pos_emb_projection.weight": (d, d), "pos_emb_projection.bias": (d,)}
    return {"model": model, "optimizer": {}, "epoch": 799, "scaler": {}, "args": "Namespace()"}


def official_selfpatch_s16() -> dict:
    """DINO + SelfPatch ViT-S/16 training checkpoint (main_selfpatch.py): {'student', 'teacher',
    'optimizer', 'epoch', 'args', 'dino_loss'}; teacher = MultiCropWrapper(backbone, ca_head,
    c_head, p_head) (student is DDP-wrapped: module.*). The backbone
    (selfpatch_vision_transformer.py) has no cls_token, no final norm and a 196-entry pos_embed;
    the class token and the norm live in SelfPatchHead (ca_head: cls_token, 2 class-attention
    blocks, norm); c_head / p_head are DINO heads."""
    def wrapper(prefix: str) -> dict:
        out = {f"{prefix}backbone.{k}": v
               for k, v in vit_backbone(384, 12, cls=False, final_norm=False).items()}
        out |= {f"{prefix}ca_head.cls_token": (1, 1, 384), f"{prefix}ca_head.norm.weight": (384,),
                f"{prefix}ca_head.norm.bias": (384,),
                f"{prefix}ca_head.cls_blocks.0.attn.q.weight": (384, 384)}
        for h, out_dim in (("c_head.", 65536), ("p_head.", 4096)):
            out |= {f"{prefix}{h}mlp.0.weight": (2048, 384), f"{prefix}{h}mlp.0.bias": (2048,),
                    f"{prefix}{h}last_layer.weight_g": (out_dim, 1),
                    f"{prefix}{h}last_layer.weight_v": (out_dim, 256)}
        return out

    return {"student": wrapper("module."), "teacher": wrapper(""), "optimizer": {}, "epoch": 200,
            "args": "Namespace()", "dino_loss": {"center": (1, 1, 65536)}}


def official_beit_b16() -> dict:
    """BEiT-base pt22k (microsoft/unilm beit/modeling_pretrain.py
    VisionTransformerForMaskedImageModeling with run_beit_pretraining.py defaults: shared
    relative position bias, no absolute pos_embed, layer scale): {'model': ...}. Blocks follow
    modeling_finetune.py: qkv without bias plus q_bias / v_bias, gamma_1 / gamma_2; the shared
    RelativePositionBias keeps its relative_position_index as a (persistent) buffer; mask_token
    and lm_head (8192-word visual vocabulary) are pre-training only."""
    dim, heads, g = 768, 12, 14
    model = {"cls_token": (1, 1, dim), "mask_token": (1, 1, dim),
             "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,),
             "rel_pos_bias.relative_position_bias_table": ((2 * g - 1) ** 2 + 3, heads),
             "rel_pos_bias.relative_position_index": (g * g + 1, g * g + 1),
             "norm.weight": (dim,), "norm.bias": (dim,),
             "lm_head.weight": (8192, dim), "lm_head.bias": (8192,)}
    for i in range(12):
        block = vit_block(f"blocks.{i}.", dim)
        del block[f"blocks.{i}.attn.qkv.bias"]
        model |= block | {f"blocks.{i}.attn.q_bias": (dim,), f"blocks.{i}.attn.v_bias": (dim,),
                          f"blocks.{i}.gamma_1": (dim,), f"blocks.{i}.gamma_2": (dim,)}
    return {"model": model}


OFFICIAL = {
    "mocov3_b16": [official_mocov3_b16],
    "ibot_s16": [lambda: official_ibot(384)],
    "ibot_b16": [lambda: official_ibot(768)],
    "scalemae_l16": [official_scalemae_l16,
                     lambda: official_scalemae_l16(independent_fcn_head=False,
                                                   project_pos_emb=True)],
    "selfpatch_s16": [official_selfpatch_s16],
    "beit_b16": [official_beit_b16],
}


# -- tests ----------------------------------------------------------------------------------------

def test_config_validates(config):
    assert set(config["variants"]) == VARIANTS
    assert set(config["tasks"]) == {"fewshot_seg", "instance_id", "retrieval", "tracking",
                                     "keypoints", "lowshot_cls", "depth", "hummingbird"}
    assert set(config["analyses"]) == {"attention", "cka", "token_norms"}
    assert "oracle" not in {e.get("baseline") for e in config["models"].values()}  # tests only


def test_every_model_has_a_family_and_label(config):
    for key, entry in config["models"].items():
        assert entry.get("label"), key
        if "timm" in entry:
            assert entry["family"] in FAMILIES, key


@pytest.mark.parametrize("key", _models("timm"))
def test_timm_architecture_resolves(config, key):
    entry = config["models"][key]
    spec = resolve_model(key, entry)
    name = entry["timm"].split(".")[0]
    assert spec["patch_size"] == int(re.search(r"patch(\d+)", name).group(1))
    size = re.match(r"(?:vit|deit|beit)_(small|base|large)_", name).group(1)
    assert spec["n_blocks"] == {"small": 12, "base": 12, "large": 24}[size]
    assert len(spec["mean"]) == len(spec["std"]) == 3


@pytest.mark.parametrize("key", _models("weights"))
def test_checkpoint_model_states_its_normalisation(config, key):
    # an untagged timm name falls back to its default tag's statistics (often 0.5 / 0.5)
    entry = config["models"][key]
    assert "mean" in entry and "std" in entry, key
    assert not entry["timm"].count("."), f"{key}: checkpoint models load into an untagged arch"


def test_every_checkpoint_model_is_modelled_here():
    assert set(_models("weights")) == set(OFFICIAL)


@pytest.mark.parametrize("key,variant", [(k, i) for k in OFFICIAL
                                         for i in range(len(OFFICIAL[k]))])
def test_official_checkpoint_maps_onto_timm(config, key, variant):
    entry = config["models"][key]
    checkpoint = OFFICIAL[key][variant]()
    state = remap_keys(unwrap(checkpoint, entry.get("state_key")), entry.get("key_map", {}))
    target = meta_state(entry["timm"], **entry.get("kwargs", {}))
    unexpected = sorted(set(state) - set(target))
    missing = sorted(k for k in set(target) - set(state) if not k.startswith(HEADS))
    assert not unexpected, f"{key}: keys timm does not have: {unexpected[:5]}"
    assert not missing, f"{key}: timm keys the checkpoint does not fill: {missing[:5]}"
    wrong = {k: (state[k], target[k]) for k in state if state[k] != target[k]}
    assert not wrong, f"{key}: shape mismatch {dict(list(wrong.items())[:3])}"


def test_fallback_wrapper_choice_matches_state_key(config):
    """Without ``state_key`` the loader takes the first of its usual wrapper keys; for every
    zoo checkpoint that is the wrapper the config names (so the choice is not silently wrong
    while the spec does not carry state_key, see the xfail below)."""
    for key, builders in OFFICIAL.items():
        checkpoint = builders[0]()
        assert unwrap(checkpoint) is checkpoint[config["models"][key]["state_key"]], key


def test_spec_carries_state_key(config):
    spec = resolve_model("selfpatch_s16", config["models"]["selfpatch_s16"])
    assert spec.get("state_key") == "teacher"


@pytest.mark.parametrize("key", _models("timm"))
def test_builds_with_the_extractor_arguments(config, key):
    """build_timm's arguments: num_classes=0 and dynamic_img_size, or the data set's input size
    for architectures without it (BEiT)."""
    from patchlens.models.resolve import timm_kwargs

    entry = config["models"][key]
    spec = resolve_model(key, entry)
    with torch.device("meta"):
        timm.create_model(entry["timm"].split(".")[0], pretrained=False,
                          **timm_kwargs(spec, (448, 448)))
    assert spec["dynamic_img_size"] == (not entry["timm"].startswith("beit"))


def test_beit_token_api_matches_the_extractor(config):
    """A tiny BEiT with the zoo's kwargs gives forward_layers what it expects: per-block
    (patch tokens, prefix tokens) pairs, a class token, patch_embed.patch_size, embed_dim."""
    from patchlens.features.extract import forward_layers

    kwargs = {**config["models"]["beit_b16"]["kwargs"], "img_size": 64, "depth": 2,
              "embed_dim": 48, "num_heads": 3, "num_classes": 0}
    model = timm.create_model("beit_base_patch16_224", pretrained=False, **kwargs).eval()
    assert model.patch_embed.patch_size == (16, 16) and len(model.blocks) == 2
    assert model.cls_token is not None and model.embed_dim == 48
    with torch.inference_mode():
        tok, cls = forward_layers(model, torch.zeros(1, 3, 64, 64), [0, 1], has_cls=True)
    assert tok.shape == (1, 2, 16, 48) and cls.shape == (1, 2, 48)


def test_no_class_token_model_through_forward_layers(config):
    from patchlens.features.extract import forward_layers

    kwargs = {**config["models"]["selfpatch_s16"]["kwargs"], "depth": 1, "embed_dim": 48,
              "num_heads": 3, "num_classes": 0, "dynamic_img_size": True}
    model = timm.create_model("vit_small_patch16_224", pretrained=False, **kwargs).eval()
    with torch.inference_mode():
        tok, cls = forward_layers(model, torch.zeros(1, 3, 32, 48), [0], has_cls=False)
    assert tok.shape == (1, 1, 6, 48) and cls is None
