"""Checkpoints that timm does not host (iBOT, MoCo-v3, Scale-MAE, SelfPatch, your own).

Protocol: fetch the file (URL or local path) into ``weights_dir`` with its SHA-256 checked, load it
with ``torch.load(weights_only=True)`` or safetensors (never an arbitrary pickle), take the state
dict from the usual wrapper keys, rename keys by the entry's ``key_map`` (prefix -> replacement,
applied in order; a replacement of ``null`` drops matching keys), and load it into the timm
architecture. Every backbone key must be matched; classifier heads may be absent.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from patchlens.errors import WeightsError

log = logging.getLogger("patchlens")

WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "module", "net")


def remap_keys(state: dict, key_map: dict) -> dict:
    """Apply prefix replacements in order; a ``None`` replacement drops the key."""
    out = {}
    for k, v in state.items():
        for old, new in key_map.items():
            if k.startswith(old):
                if new is None:
                    k = None
                    break
                k = new + k[len(old):]
        if k is not None:
            out[k] = v
    return out


def unwrap(state: dict, key: str | None = None) -> dict:
    """The tensor dict inside a checkpoint (``key`` names the wrapper, e.g. ``teacher``)."""
    if key:
        if key not in state:
            raise WeightsError(f"checkpoint has no {key!r} entry (has {sorted(state)[:8]})")
        return state[key]
    for k in WRAPPER_KEYS:
        if k in state and isinstance(state[k], dict):
            return state[k]
    return state


def read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import argparse

    import torch

    try:  # training checkpoints often store their argparse.Namespace beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot be loaded with weights_only=True ({exc}); "
                           "convert it to safetensors or a plain state dict") from exc


def local_checkpoint(spec: dict, weights_dir) -> Path:
    """Path of the checkpoint, downloading (checksum-verified) if it is a URL."""
    src = str(spec["weights"])
    if "://" not in src or src.startswith("file://"):
        path = Path(src.removeprefix("file://")).expanduser()
        if not path.exists():
            raise WeightsError(f"model {spec['key']!r}: weights file {path} not found; "
                               "fix 'weights:' in its config entry")
        if spec.get("sha256"):
            from patchlens.io import sha256sum

            if sha256sum(path) != spec["sha256"]:
                raise WeightsError(f"model {spec['key']!r}: {path} does not match its sha256; "
                                   "replace the file or correct 'sha256:'")
        return path
    from patchlens.data.download import fetch

    dest = Path(weights_dir) / spec["key"] / src.rsplit("/", 1)[-1]
    try:
        return fetch(src, dest, sha256=spec.get("sha256"))
    except Exception as exc:
        raise WeightsError(f"model {spec['key']!r}: could not fetch weights from {src} "
                           f"({str(exc).splitlines()[0]}); place the file at {dest} "
                           "or set 'weights:' to a local path") from exc


def load_checkpoint(model, spec: dict, weights_dir) -> None:
    """Load ``spec['weights']`` into ``model`` (see the module docstring for the protocol)."""
    state = unwrap(read_state(local_checkpoint(spec, weights_dir)), spec.get("state_key"))
    state = remap_keys(state, spec.get("key_map", {}))
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn",
                        None)
    if filter_fn is not None:  # timm's own adaptation (e.g. BEiT's relative position tables)
        state = filter_fn(state, model)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        log.warning("model %r: %d checkpoint keys unused (e.g. %s)", spec["key"],
                    len(result.unexpected_keys), result.unexpected_keys[:3])
    missing = [k for k in result.missing_keys if not k.startswith(("head", "fc_norm"))]
    if missing:
        raise WeightsError(f"model {spec['key']!r}: checkpoint lacks {len(missing)} backbone "
                           f"keys (e.g. {missing[:3]}); fix 'key_map:' in its entry")
