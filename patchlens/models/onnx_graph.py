"""ONNX graph -> timm state dict, by graph topology: steps 1-4 of the protocol in
:mod:`patchlens.models.onnx_import` (docs/models.md, "ONNX exports"): named initializers keep
their PyTorch names, anonymous ``MatMul`` weights are placed by the named bias their output is
added to, the position embedding by the in-graph ``Resize``, and every initializer the backbone
depends on must be placed.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

from patchlens.errors import WeightsError

# Per-layer roles: Hugging Face name after ``encoder.layer.<i>.`` -> timm name after
# ``blocks.<i>.``. q/k/v are fused afterwards.
LAYER_ROLES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layernorm_before.weight": "norm1.weight", "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight", "layernorm_after.bias": "norm2.bias",
    "attention.attention.query": "q", "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
}
TOP_ROLES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.position_embeddings": "pos_embed",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
}
LAYER_NAME = re.compile(r"^(?P<prefix>.*?)encoder\.layer\.(?P<i>\d+)\.(?P<role>.+)$")
LINEAR_BIAS = re.compile(r"^(?P<base>.+)\.bias$")


# ----------------------------------------------------------------------------- graph -> state
def _array(init):
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def _is_weight(init) -> bool:
    """Float initializers with more than one element (not shape constants or scalars)."""
    from onnx import TensorProto

    return (init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                               TensorProto.BFLOAT16) and int(np.prod(init.dims or [1])) > 1)


def _prefix(names) -> str:
    """The backbone prefix (``backbone.``, ``vit.``, ``dinov2.`` or empty), from the class token."""
    for n in names:
        if n.endswith("embeddings.cls_token"):
            return n[: -len("embeddings.cls_token")]
    raise ValueError("no '*embeddings.cls_token' initializer: not a Hugging Face ViT export")


def _ancestors(graph, outputs: set[str]) -> list:
    """Nodes that ``outputs`` depend on, in graph order."""
    producer = {o: n for n in graph.node for o in n.output}
    need, seen, stack = set(), set(), list(outputs)
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        need.add(id(n))
        stack.extend(i for i in n.input if i)
    return [n for n in graph.node if id(n) in need]


def convert_graph(model_proto, key: str = "model") -> tuple[dict, dict]:
    """A Hugging Face ViT/DINOv2 ONNX graph -> (timm state dict of float32 numpy arrays, facts).

    ``facts``: embed_dim, depth, num_heads, mlp_ratio, patch_size, native grid, layer_scale.
    Raises WeightsError naming ``key`` and the first initializer it cannot place."""
    g = model_proto.graph
    inits = {i.name: i for i in g.initializer}
    try:
        prefix = _prefix(inits)
    except ValueError as exc:
        raise WeightsError(f"model {key!r}: {exc}") from None
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    hf: dict[str, np.ndarray] = {}   # Hugging Face names (torch layout)
    placed: set[str] = set()
    for name, init in inits.items():  # 1. named initializers keep their names
        rel = name[len(prefix):] if name.startswith(prefix) else None
        m = LAYER_NAME.match(rel or "")
        if rel is not None and (rel in TOP_ROLES or (m and not m.group("prefix"))):
            hf[rel] = _array(init)
            placed.add(name)
    for n in g.node:  # 2. anonymous MatMul weights: the named bias Add after them
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = n.input[1]
        if w in placed:
            continue
        bias = None
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] in inits:
            bias = n.input[2]
        else:
            for c in consumers.get(n.output[0], []):
                if c.op_type == "Add":
                    bias = next((i for i in c.input if i in inits and i.startswith(prefix)), None)
                    if bias:
                        break
        m = LINEAR_BIAS.match(bias or "")
        if not m:
            continue  # left unplaced: reported below if the backbone needs it
        arr = _array(inits[w])
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        hf[m.group("base")[len(prefix):] + ".weight"] = arr if trans_b else arr.T
        placed.add(w)
    resize = [n for n in g.node if n.op_type == "Resize"]
    if "embeddings.position_embeddings" not in hf and resize:  # 3. split position embedding
        grid_name = _source_initializer(g, resize[0].input[0], inits)
        downstream = _descendants(g, resize[0].output[0])
        cls_name = next((i for n in g.node if n.op_type == "Concat" and id(n) in downstream
                         for i in n.input if i in inits and _is_weight(inits[i])
                         and i not in placed), None)
        if grid_name and cls_name:
            grid, cls = _array(inits[grid_name]), _array(inits[cls_name])
            hf["embeddings.position_embeddings"] = np.concatenate(
                [cls.reshape(1, 1, -1), grid.reshape(1, -1, grid.shape[-1])], axis=1)
            placed |= {grid_name, cls_name}

    final = f"{prefix}layernorm.bias"
    if final not in inits:
        raise WeightsError(f"model {key!r}: no {final!r} initializer: the backbone's final "
                           "LayerNorm is missing, not a Hugging Face ViT/DINOv2 export")
    out = {o for c in consumers.get(final, []) for o in c.output}
    for n in _ancestors(g, out):  # 4. everything the backbone depends on must be placed
        for i in n.input:
            if i in inits and i not in placed and _is_weight(inits[i]):
                raise WeightsError(f"model {key!r}: cannot place ONNX initializer {i!r} "
                                   f"{list(inits[i].dims)} (input of node {n.name or n.op_type!r}"
                                   "); only Hugging Face ViTModel/Dinov2Model exports are mapped")
    return _to_timm(hf, key), _facts(hf, g, inits, consumers)


def _source_initializer(graph, tensor: str, inits) -> str | None:
    """The float initializer that ``tensor`` is computed from through shape ops."""
    producer = {o: n for n in graph.node for o in n.output}
    while tensor not in inits:
        n = producer.get(tensor)
        if n is None or n.op_type not in ("Reshape", "Transpose", "Cast", "Unsqueeze",
                                          "Squeeze", "Identity"):
            return None
        tensor = n.input[0]
    return tensor


def _descendants(graph, tensor: str) -> set[int]:
    """ids of the nodes that consume ``tensor``, directly or not."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out, stack = set(), [tensor]
    while stack:
        for n in consumers.get(stack.pop(), []):
            if id(n) not in out:
                out.add(id(n))
                stack.extend(n.output)
    return out


def _to_timm(hf: dict, key: str) -> dict:
    """Hugging Face names -> timm names, q/k/v fused into ``qkv``."""
    state, qkv = {}, {}
    for name, arr in hf.items():
        m = LAYER_NAME.match(name)
        if m:
            role = m.group("role")
            base, _, kind = role.rpartition(".")
            if role in LAYER_ROLES:
                state[f"blocks.{m.group('i')}.{LAYER_ROLES[role]}"] = arr
            elif base in LAYER_ROLES and LAYER_ROLES[base] in "qkv":
                qkv.setdefault((int(m.group("i")), kind), {})[LAYER_ROLES[base]] = arr
            elif base in LAYER_ROLES:
                state[f"blocks.{m.group('i')}.{LAYER_ROLES[base]}.{kind}"] = arr
            else:
                raise WeightsError(f"model {key!r}: cannot place ONNX initializer {name!r} "
                                   "(unknown layer role)")
        elif name in TOP_ROLES:
            state[TOP_ROLES[name]] = arr
        else:
            raise WeightsError(f"model {key!r}: cannot place ONNX initializer {name!r}")
    for (i, kind), parts in qkv.items():
        if set(parts) != set("qkv"):
            missing = sorted(set("qkv") - set(parts))
            raise WeightsError(f"model {key!r}: layer {i} has no {missing[0]} {kind} in the "
                               "ONNX graph")
        state[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([parts[c] for c in "qkv"], 0)
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in state.items()}  # writable


def _facts(hf: dict, graph, inits, consumers) -> dict:
    """Architecture facts of the converted graph (checked against the timm model)."""
    depth = 1 + max(int(LAYER_NAME.match(n).group("i")) for n in hf if LAYER_NAME.match(n))
    proj = hf["embeddings.patch_embeddings.projection.weight"]
    pos = hf["embeddings.position_embeddings"]
    side = int(round((pos.shape[1] - 1) ** 0.5))
    embed = int(proj.shape[0])
    return {"embed_dim": embed, "depth": depth, "patch_size": int(proj.shape[-1]),
            "mlp_hidden": int(hf["encoder.layer.0." + ("mlp.fc1.weight" if
                                  "encoder.layer.0.mlp.fc1.weight" in hf else
                                  "intermediate.dense.weight")].shape[0]),
            "grid": [side, side], "layer_scale": "encoder.layer.0.layer_scale1.lambda1" in hf,
            "num_heads": _num_heads(graph, inits, consumers, embed)}


def _num_heads(graph, inits, consumers, embed: int) -> int | None:
    """Heads from the Reshape that splits the first query projection into (heads, head_dim):
    the constant pair (n, d) with n * d = embed_dim in its target shape; None if not found."""
    from onnx import numpy_helper

    consts = {o: numpy_helper.to_array(a.t) for n in graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value" for o in n.output}
    consts.update({k: _array(v) for k, v in inits.items() if not _is_weight(v)})
    producer = {o: n for n in graph.node for o in n.output}
    bias = next((b for b in inits if b.endswith("encoder.layer.0.attention.attention.query.bias")),
                None)
    for add in consumers.get(bias, []):
        for r in consumers.get(add.output[0], []):
            if r.op_type != "Reshape":
                continue
            shape = r.input[1]
            parts = [consts[shape]] if shape in consts else [
                consts[i] for i in getattr(producer.get(shape), "input", []) if i in consts]
            vals = [int(v) for p in parts for v in np.ravel(p)]
            for a, b in zip(vals, vals[1:]):
                if a > 0 and b > 0 and a * b == embed:
                    return a
    return None


def params_sha256(state: dict) -> str:
    """SHA-256 over the converted parameters (name + float32 bytes, sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name], np.float32).tobytes())
    return h.hexdigest()
