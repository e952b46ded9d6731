"""The device choice is explicit (issue 19.5): the config's ``gpu`` decides where every torch path
runs; with ``gpu: false`` nothing moves to CUDA even when CUDA is present."""
import runpy
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from patchlens import device as dev
from patchlens.features import extract as extract_module
from patchlens.features.store import FeatureStore

ROOT = Path(__file__).resolve().parents[2]
TINY = {"timm": "vit_tiny_patch16_224", "pretrained": False,
        "kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}


def _extract_script(image_dataset, out, gpu):
    """Run scripts/extract_features.py as the rule does, with the config's ``gpu``."""
    snakemake = SimpleNamespace(
        threads=1, wildcards=SimpleNamespace(model="tiny", dataset="ds"),
        params=SimpleNamespace(model=TINY, img_size=[32, 48]),
        input=SimpleNamespace(manifest=str(image_dataset / "manifest.csv")),
        output=[str(out)], log=[],
        config={"gpu": gpu, "extraction": {"batch_size": 2}, "weights_dir": "weights"})
    runpy.run_path(str(ROOT / "scripts" / "extract_features.py"), {"snakemake": snakemake})


@pytest.mark.parametrize("gpu, expected", [(False, "cpu"), (True, "cuda")])
def test_extraction_follows_the_config_gpu_even_when_cuda_is_present(
        monkeypatch, tmp_path, image_dataset, gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked, placed = [], []
    real_extract, real_build = extract_module.extract, extract_module.build_model

    def extract_on_cpu(*args, **kwargs):  # the device the script asks for; run on the CPU here
        asked.append(kwargs.get("device", "cpu"))
        return real_extract(*args, **{**kwargs, "device": "cpu"})

    def build(spec, weights_dir, size, device):
        placed.append(str(device))  # where extraction puts the model
        return real_build(spec, weights_dir, size, device)

    monkeypatch.setattr(extract_module, "extract", extract_on_cpu)
    monkeypatch.setattr(extract_module, "build_model", build)
    _extract_script(image_dataset, tmp_path / "f.h5", gpu)
    assert asked == [expected] and placed == ["cpu"]
    with FeatureStore(tmp_path / "f.h5") as store:  # and the job finished its file
        assert store.attrs["model"] == "tiny" and len(store.images) == 4


def test_extract_places_the_model_where_it_is_told_never_on_cuda_by_itself(
        monkeypatch, tmp_path, image_dataset):
    """The package function's default is the CPU, whatever CUDA says."""
    from patchlens.data.dataset import Dataset
    from patchlens.models.resolve import resolve_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    placed, real_build = [], extract_module.build_model
    monkeypatch.setattr(extract_module, "build_model", lambda spec, wd, size, device: (
        placed.append(str(device)) or real_build(spec, wd, size, device)))
    extract_module.extract(resolve_model("tiny", TINY), Dataset(image_dataset),
                           tmp_path / "g.h5", img_size=[32, 48], progress=False)
    assert placed == ["cpu"]


def test_gpu_scope_governs_the_numerical_helpers_and_ends_with_its_block(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.device() == "cpu" and not dev.gpu_requested()  # nothing asked: the CPU
    with dev.gpu_scope(False):
        assert dev.device() == "cpu"
    with dev.gpu_scope(True):
        assert dev.device() == "cuda" and dev.device(gpu=False) == "cpu"
        seen = []  # a thread that did not copy the context is not in the scope
        t = threading.Thread(target=lambda: seen.append(dev.device()))
        t.start()
        t.join()
        assert seen == ["cpu"]
    assert dev.device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with dev.gpu_scope(True):
        assert dev.device() == "cpu"  # asked, but no GPU present


@pytest.mark.parametrize("device, seen", [("cpu", "cpu"), ("cuda", "cuda")])
def test_evaluators_run_where_the_script_says(monkeypatch, tmp_path, image_dataset, device, seen):
    """evaluate_all(device=...) is the scope of the task's torch paths (device(), matmul):
    the CPU for ``gpu: false`` even when CUDA is present."""
    import numpy as np

    from patchlens import evaluate
    from patchlens.features.store import write_features

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    inside = []
    monkeypatch.setattr(evaluate, "score_layers",
                        lambda *a, **k: (inside.append(dev.device()) or ({}, {}, 0)))
    feats = tmp_path / "f.h5"
    write_features(feats, np.zeros((4, 1, 12, 3), np.float16), [f"im{i}" for i in range(4)],
                   (3, 4), {"model": "m", "dataset": "ds"})
    evaluate.evaluate_all("fewshot_seg", {}, feats, image_dataset, {}, device=device)
    assert inside == [seen] and dev.device() == "cpu"  # and nothing left behind


@pytest.mark.parametrize("task", ["tracking", "hummingbird"])
def test_a_task_whose_run_takes_a_device_gets_the_jobs(monkeypatch, tmp_path, task):
    """score_layers hands the job's device to a task whose ``run`` takes one (tracking's and
    hummingbird's torch engines), once per layer and variant; the other tasks are called as
    before."""
    import dataclasses

    import numpy as np

    from patchlens import evaluate
    from patchlens.features.store import FeatureStore, write_features
    from patchlens.tasks.registry import get_task

    feats = tmp_path / "f.h5"
    write_features(feats, np.zeros((2, 2, 12, 3), np.float16), ["a", "b"], (3, 4),
                   {"model": "m", "dataset": "ds"})
    seen = []

    def run(store, dataset, transform, params, layers=None, units=None, device="cpu"):
        seen.append((layers[0], device))
        return evaluate.pd.DataFrame()

    spec = dataclasses.replace(get_task(task), run=run, run_variants=None)
    with FeatureStore(feats) as store:
        evaluate.score_layers(spec, store, None, {"raw": lambda layer, x: x}, {}, device="cuda")
    assert seen == [(0, "cuda"), (1, "cuda")]
    plain = dataclasses.replace(spec, run=lambda *a, layers=None, units=None: seen.append(layers)
                                or evaluate.pd.DataFrame())
    with FeatureStore(feats) as store:
        evaluate.score_layers(plain, store, None, {"raw": lambda layer, x: x}, {}, device="cuda")
    assert seen[-2:] == [[0], [1]]
