"""Where the torch paths run: the one home of the device choice.

A job runs on CUDA when the config says ``gpu: true`` and a GPU is present, on the CPU otherwise;
results are the same up to float32 rounding and ties (tests compare the torch path on the CPU
with faiss / numpy). The choice is explicit: the workflow's scripts pass the config's ``gpu`` to
every torch path -- as ``device(gpu)`` where a model is placed (extraction, attention), and as a
:func:`gpu_scope` around the evaluators and CKA, whose numerical helpers (:func:`matmul`,
:func:`device` without argument) read it. Nothing travels through the environment: a process or
thread that did not enter a scope computes on the CPU. Importing this module does not import
torch.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

_GPU: ContextVar[bool] = ContextVar("patchlens_gpu", default=False)


@contextmanager
def gpu_scope(gpu: bool):
    """Within the block, the torch paths of this thread use a GPU when ``gpu`` and one is
    present (:func:`device`); outside it (and in threads started without copying the context)
    they use the CPU."""
    token = _GPU.set(bool(gpu))
    try:
        yield
    finally:
        _GPU.reset(token)


def gpu_requested() -> bool:
    """True inside a :func:`gpu_scope` whose ``gpu`` is true."""
    return _GPU.get()


def device(gpu: bool | None = None) -> str:
    """``"cuda"`` when a GPU is asked for (``gpu``; without it, the enclosing :func:`gpu_scope`)
    and present, else ``"cpu"``."""
    want = gpu_requested() if gpu is None else gpu
    if not want:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def to_device(x, dev: str | None = None, dtype=None):
    """A numpy array or tensor as a torch tensor on ``dev`` (default :func:`device`)."""
    import torch

    dev = device() if dev is None else dev
    t = torch.as_tensor(x)
    return t.to(device=dev, dtype=dtype or (torch.float32 if t.is_floating_point() else t.dtype))


def job_threads() -> int:
    """CPU threads of this job: ``OMP_NUM_THREADS`` (which Snakemake sets to a rule's threads),
    else the CPUs this process may use."""
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        return max(1, min(int(os.environ.get("OMP_NUM_THREADS", avail)), avail or 1))
    except ValueError:
        return max(1, avail or 1)


def row_slices(n: int, parts: int) -> list[slice]:
    """At most ``parts`` even, consecutive, non-empty slices covering range(n)."""
    bounds = [round(i * n / min(parts, n)) for i in range(min(parts, n) + 1)] if n else [0]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


GPU_MIN_FLOP = 1e8  # smaller products stay in numpy: the transfer would cost more than the work


def matmul(a, b, dev: str | None = None):
    """``a @ b`` of numpy arrays, as numpy in the inputs' result dtype: on CUDA (torch) when a
    GPU is in use (:func:`device`) and the product is worth the transfer, else numpy. ``dev``
    forces the torch path on that device (``"cpu"`` in the tests)."""
    import numpy as np

    if dev is None:
        if not gpu_requested() or 2.0 * a.shape[0] * a.shape[-1] * b.shape[-1] < GPU_MIN_FLOP:
            return a @ b
        dev = device()
        if dev == "cpu":
            return a @ b
    import torch

    dtype = np.result_type(a.dtype, b.dtype)
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype)).to(dev)
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype)).to(dev)
    return (ta @ tb).cpu().numpy()


def choose_engine(engine: str | None, dev: str, who: str) -> str:
    """The evaluator's engine on device ``dev``: ``engine`` when given, else ``"numpy"`` on the
    CPU and ``"torch"`` elsewhere; ValueError (``who`` names the caller) for an unknown engine or
    numpy off the CPU."""
    engine = engine or ("numpy" if dev == "cpu" else "torch")
    if engine not in ("numpy", "torch") or (engine == "numpy" and dev != "cpu"):
        raise ValueError(f"{who}: engine {engine!r} cannot run on device {dev!r}")
    return engine
