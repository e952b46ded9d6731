"""Where the torch paths of the evaluators run: the one home of the device choice.

A job runs on CUDA when the config says ``gpu: true`` (the workflow's scripts call
:func:`use_gpu`) and a GPU is present, on the CPU otherwise; results are the same up to float32
rounding and ties (tests compare the torch path on the CPU with faiss / numpy). Importing this
module does not import torch.
"""
from __future__ import annotations

import os

_ENV = "PATCHLENS_GPU"  # "1": use a GPU when present (set by use_gpu, inherited by children)


def use_gpu(flag: bool) -> None:
    """Ask the torch paths of this process (and its children) to use a GPU when present."""
    os.environ[_ENV] = "1" if flag else "0"


def gpu_requested() -> bool:
    return os.environ.get(_ENV, "0") == "1"


def device(gpu: bool | None = None) -> str:
    """``"cuda"`` when a GPU is requested (argument, else :func:`use_gpu`) and present, else
    ``"cpu"``."""
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
