"""Checkpoints that timm does not host (iBOT, MoCo-v3, Scale-MAE, SelfPatch, your own).

Protocol: fetch the file (URL or local path) into ``weights_dir`` with its SHA-256 checked, load it
with ``torch.load(weights_only=True)`` or safetensors (never an arbitrary pickle), take the state
dict from the usual wrapper keys, rename keys by the entry's ``key_map`` (prefix -> replacement,
applied in order; a replacement of ``null`` drops matching keys), and load it into the timm
architecture. Every backbone key must be matched; classifier heads may be absent.

The download cache is keyed by the URL and the configured ``sha256``
(``weights_dir/<model>/<16 hex of sha256(url, sha256)>/<file name>``): a changed URL (v1 -> v2)
is a new download, never the old file. Jobs that need one checkpoint take turns on its download
(:func:`patchlens.data.download.locked`, as the data set recipes do): the first downloads, the
others find the file. A cached file is verified before use: against ``sha256:`` when given,
else against the digest recorded after its first successful load, beside it
(``<file>.sha256``) or, when ``weights_dir`` is not writable (a read-only shared directory with
checkpoints placed by hand), under :data:`RECORDS` in the working directory
(``results/weights_sha256/<the file's path under weights_dir>.sha256``; the workflow runs every
job in the directory that holds ``results/``). A downloaded file that does not load (truncated
or corrupt, e.g. a transfer without ``Content-Length`` that was cut) is removed from the cache
with its recorded digest, so the next run downloads it again; one that cannot be removed (a
read-only ``weights_dir``) is named in the message, to be deleted.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import re
from pathlib import Path

from patchlens.errors import WeightsError

log = logging.getLogger("patchlens")
RECORDS = Path("results") / "weights_sha256"  # first-use digests when weights_dir is read-only

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


class UnreadableCheckpoint(WeightsError):
    """A checkpoint file that is truncated or corrupt; ``what`` is the message without advice."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what}; {fix}")
        self.what = what


def read_state(path: Path) -> dict:
    """The tensors of a checkpoint, never unpickling code."""
    fix = "replace the file or fix 'weights:'"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError: truncated or not a safetensors file
            raise UnreadableCheckpoint(f"{path}: not a readable safetensors file "
                                       f"({' '.join(str(exc).split())[:160]})", fix) from None
    import argparse
    import pickle
    import zipfile

    import torch

    try:  # training checkpoints often store their argparse.Namespace beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" (it needs {found[1]})" if found else ""
        raise WeightsError(
            f"{path}: holds Python objects besides tensors{what}, and patchlens never unpickles "
            "code; convert it to safetensors (safetensors.torch.save_file of its state dict, "
            "where you trust its origin) or to a plain tensor state dict, and point 'weights:' "
            "at the converted file") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = " ".join(str(exc).split()).split(". ")[0][:160]  # torch adds long advice
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint, truncated or corrupt "
                                   f"({type(exc).__name__}: {first})", fix) from None


def cache_path(spec: dict, weights_dir) -> Path:
    """Where a checkpoint URL is cached: keyed by the URL and the configured sha256."""
    src = str(spec["weights"])
    key = hashlib.sha256(f"{src}\n{spec.get('sha256') or ''}".encode()).hexdigest()[:16]
    name = src.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
    return Path(weights_dir) / spec["key"] / key / name


def _record_paths(dest: Path, weights_dir) -> tuple[Path, Path]:
    """Where the first-use digest of a cached ``dest`` is recorded: beside it, or under
    :data:`RECORDS` when ``weights_dir`` is not writable (module doc)."""
    beside = dest.with_name(dest.name + ".sha256")
    return beside, RECORDS / beside.relative_to(Path(weights_dir))


def _recorded(dest: Path, weights_dir) -> Path | None:
    """The existing record of ``dest``'s first-use digest, None when there is none yet."""
    return next((p for p in _record_paths(dest, weights_dir) if p.is_file()), None)


def _record(dest: Path, weights_dir) -> None:
    """Record ``dest``'s digest on its first use: beside it, else (read-only) under RECORDS."""
    from patchlens.io import atomic_path, sha256sum

    digest = sha256sum(dest) + "\n"
    beside, fallback = _record_paths(dest, weights_dir)
    try:
        with atomic_path(beside) as tmp:
            tmp.write_text(digest)
    except OSError as exc:  # a read-only shared weights_dir
        log.info("%s: not writable (%s); its first-use sha256 is recorded in %s", dest.parent,
                 exc.strerror or exc, fallback)
        with atomic_path(fallback) as tmp:
            tmp.write_text(digest)


def _evict(dest: Path, weights_dir) -> bool:
    """Remove a cached download that does not load, and its recorded digest (under the
    download lock); False when it cannot be removed (a read-only weights_dir)."""
    from patchlens.data.download import locked

    try:
        with locked(dest):
            dest.unlink(missing_ok=True)
    except OSError:
        return False
    for record in _record_paths(dest, weights_dir):
        try:
            record.unlink(missing_ok=True)
        except OSError:
            pass
    return True


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
    from patchlens.data.download import ChecksumMismatch, SourceUnreachable, fetch, locked
    from patchlens.io import sha256sum

    dest = cache_path(spec, weights_dir)
    recorded = _recorded(dest, weights_dir) if dest.exists() else None
    if recorded is not None and not spec.get("sha256"):
        if sha256sum(dest) != recorded.read_text().strip():
            raise WeightsError(f"model {spec['key']!r}: cached weights {dest} changed since they "
                               f"were first loaded (sha256 differs from {recorded}); delete "
                               f"{dest.parent} and rerun to fetch them again")
    try:
        if dest.exists():  # verified against sha256: when given; nothing is written
            return fetch(src, dest, sha256=spec.get("sha256"), cache_key="weights_dir")
        with locked(dest):  # concurrent jobs: one downloads, the others then find the file
            return fetch(src, dest, sha256=spec.get("sha256"), cache_key="weights_dir")
    except ChecksumMismatch as exc:
        raise WeightsError(f"model {spec['key']!r}: {exc}") from None
    except SourceUnreachable as exc:
        raise WeightsError(f"model {spec['key']!r}: {exc}") from None
    except Exception as exc:
        raise WeightsError(f"model {spec['key']!r}: could not fetch weights from {src} "
                           f"({' '.join(str(exc).split())[:200]}); place the file at {dest} "
                           "(under weights_dir) or set 'weights:' to a local path") from exc


def load_checkpoint(model, spec: dict, weights_dir) -> None:
    """Load ``spec['weights']`` into ``model`` (see the module docstring for the protocol)."""
    path = local_checkpoint(spec, weights_dir)
    cached = path == cache_path(spec, weights_dir)
    try:
        raw = read_state(path)
    except UnreadableCheckpoint as exc:
        if not cached:
            raise
        if _evict(path, weights_dir):
            raise WeightsError(f"{exc.what}; the download was removed from weights_dir: rerun "
                               "to fetch it again") from None
        raise WeightsError(f"{exc.what}; delete {path} (a download cached in weights_dir) and "
                           "rerun to fetch it again") from None
    state = unwrap(raw, spec.get("state_key"))
    state = remap_keys(state, spec.get("key_map", {}))
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn",
                        None)
    if filter_fn is not None:  # timm's own adaptation (e.g. BEiT's relative position tables)
        state = filter_fn(state, model)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes that do not fit the architecture
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise WeightsError(f"model {spec['key']!r}: checkpoint does not fit {spec['timm']!r} "
                           f"({(lines[0] if lines else str(exc).splitlines()[0])[:200]}); fix "
                           "'timm:', 'kwargs:' or 'key_map:' in its entry") from None
    if result.unexpected_keys:
        log.warning("model %r: %d checkpoint keys unused (e.g. %s)", spec["key"],
                    len(result.unexpected_keys), result.unexpected_keys[:3])
    missing = [k for k in result.missing_keys if not k.startswith(("head", "fc_norm"))]
    if missing:
        raise WeightsError(f"model {spec['key']!r}: checkpoint lacks {len(missing)} backbone "
                           f"keys (e.g. {missing[:3]}); fix 'key_map:' in its entry")
    if cached and not spec.get("sha256") and _recorded(path, weights_dir) is None:
        _record(path, weights_dir)  # first use: later runs verify against it
