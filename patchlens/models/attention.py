"""Capture the real attention probabilities of timm ViTs, one layer at a time.

timm's attention modules (``timm.layers.Attention`` used by ViT / DeiT / DINO / DINOv2 / CLIP /
MAE, ``timm.layers.AttentionRope``, ``timm.models.eva.EvaAttention`` and BEiT's own
``timm.models.beit.Attention`` with relative position bias) run fused
``scaled_dot_product_attention`` by default, which never materialises the attention matrix.
Every one of them also has a non-fused path selected by the instance flag ``fused_attn``::

    attn = softmax(q k^T * scale [+ relative position bias | mask]);  attn = attn_drop(attn)

so the input of ``attn_drop`` is exactly the softmax probability matrix (b, heads, N, N) that the
model multiplies with ``v``, bias and masks included. :class:`AttentionCapture` switches the
attention modules of ``model.blocks`` to the non-fused path, hooks ``attn_drop`` and hands each
layer's probabilities to a callback as soon as they exist, so no more than one layer (or, without
a callback, one forward pass) of maps is ever held. On exit it restores ``fused_attn``, removes the
hooks and restores every module's train/eval flag.

The capture runs the model in eval mode (dropout off), so the probabilities are those of inference
and the model output equals the fused output up to float rounding (tested).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from patchlens.errors import ConfigError

MapCallback = Callable[[int, torch.Tensor], None]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every transformer block, in block order.

    Supports timm models that keep their blocks in ``model.blocks`` with the attention module at
    ``block.attn`` exposing ``fused_attn`` and an ``attn_drop`` dropout applied to the softmax
    output (VisionTransformer, DINOv2 incl. register tokens, CLIP, DeiT, BEiT, EVA).
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError(f"model {type(model).__name__}: no 'blocks' attribute; attention "
                          "capture supports timm ViT-family models (vit_*, deit_*, DINOv2, CLIP, "
                          "BEiT, EVA)")
    mods = []
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not hasattr(attn, "fused_attn") or \
                not isinstance(getattr(attn, "attn_drop", None), nn.Module):
            raise ConfigError(f"model {type(model).__name__}: block {i} attention "
                              f"({type(attn).__name__}) has no non-fused path with 'attn_drop'; "
                              "attention capture supports timm ViT/DeiT/DINOv2/CLIP/BEiT/EVA")
        mods.append(attn)
    return mods


class AttentionCapture:
    """Context manager that exposes the softmax attention of every block.

    ``on_map(layer, probs)`` is called once per block and forward pass with the detached
    probabilities ``probs`` (b, heads, N, N) on the model's device, N = prefix tokens + patches,
    rows summing to 1. Without ``on_map`` the maps of the latest forward pass are kept in
    ``self.maps`` (list indexed by block): each block's slot is replaced by its next map, and all
    slots are dropped when ``model(...)`` is called again and when the context exits.

    Example::

        with AttentionCapture(model, on_map=lambda layer, a: ...):
            with torch.inference_mode():
                model(batch)
    """

    def __init__(self, model: nn.Module, on_map: MapCallback | None = None):
        self.model = model
        self.on_map = on_map
        self.modules = attention_modules(model)
        self.maps: list[torch.Tensor | None] = [None] * len(self.modules)
        self._handles: list = []
        self._fused: list[bool] = []
        self._training: list[tuple[nn.Module, bool]] = []

    @property
    def num_layers(self) -> int:
        return len(self.modules)

    def _hook(self, layer: int):
        def hook(_module, inputs, _output):
            probs = inputs[0].detach()
            if self.on_map is not None:
                self.on_map(layer, probs)
            else:
                self.maps[layer] = probs
        return hook

    def _clear(self, *_):
        self.maps = [None] * len(self.modules)

    def __enter__(self) -> "AttentionCapture":
        self._training = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            for i, mod in enumerate(self.modules):
                self._fused.append(bool(mod.fused_attn))
                mod.fused_attn = False
                self._handles.append(mod.attn_drop.register_forward_hook(self._hook(i)))
            self._handles.append(self.model.register_forward_pre_hook(self._clear))
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for mod, fused in zip(self.modules, self._fused):
            mod.fused_attn = fused
        self._fused = []
        for m, flag in self._training:
            m.training = flag
        self._training = []
        self._clear()

    def __exit__(self, *exc) -> None:
        self._restore()
