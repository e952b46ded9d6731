"""Device rehearsal (issue 20, item 7): the study's heaviest jobs at their real shapes on one GPU.

Generated data, random-init timm ViTs, no Snakemake, no faiss on the device path; needs torch,
timm, h5py, h5netcdf, numpy, pandas, scipy, pillow (and patchlens from this checkout). Jobs:

- ``extract``: ViT-B/16 and ViT-B/8 at 448 px, every block plus the final norm, as
  :func:`patchlens.features.extract.forward_layers` runs them, over VOC's 2913 images / ``--cut``;
- ``fewshot``: each model's few-shot segmentation of one layer, one seed, all seven variants and
  both heads through :func:`patchlens.evaluate.score_layers` on ``--device`` (support: 5 shots x
  20 classes, about 100 images; query: VOC's 1449 val images / ``--cut``);
- ``tracking``: ViT-B/16 label propagation at 480 x 832 (grid 30 x 52) over one generated video
  of DAVIS's 1999 frames / ``--cut`` frames, all seven variants from shared products
  (:func:`patchlens.evaluation.propagation.track_variants`, torch on the device);
- ``similarity``: the achieved TFLOP/s of the few-shot similarity products
  (:class:`~patchlens.evaluation.similarity.VariantIndex`, 2 nq n C per product) and an equality
  check of the device path against the CPU path (faiss backend) on a slice of queries.

It prints one line per job: measured seconds, planned seconds (from :func:`patchlens.plan.plan`
where it can be computed here, else empty), peak GPU memory. Meant for one H100/H200 (< 8 min):

    python benchmarks/device_rehearsal.py --device cuda
    python benchmarks/device_rehearsal.py --device cpu --small    # smoke test, < 2 min on 2 cores
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT)]

VOC = {"train": 1464, "val": 1449, "frames": 1999}
VARIANTS = ["raw", "zscore", "drop1", "drop2", "drop4", "drop8", "drop16"]
MODELS = {"vit_b16": ("vit_base_patch16_224", 16), "vit_b8": ("vit_base_patch8_224", 8)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_gb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2 ** 30


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def job_extract(name: str, n_images: int, size: int, batch: int, device: str,
                **kw) -> float:
    """Seconds to run every block (+ final norm) of a random-init ViT over ``n_images``
    (``kw``: timm arguments, e.g. ``depth`` for the smoke test)."""
    import timm
    import torch

    from patchlens.features.extract import forward_layers

    arch, _ = MODELS[name]
    model = timm.create_model(arch, pretrained=False, img_size=size, **kw).to(device).eval()
    layers = list(range(len(model.blocks)))
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        forward_layers(model, x[:1], layers, True, norm=True)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for s in range(0, n_images, batch):
            forward_layers(model, x[:min(batch, n_images - s)], layers, True, norm=True)
        _sync(device)
    return time.perf_counter() - t0


def job_fewshot(work: Path, n_train: int, n_query: int, grid: tuple[int, int], channels: int,
                device: str) -> float:
    """Seconds of one layer, one seed, every variant, both heads (data generated first)."""
    import fewshot_bench as fb

    from patchlens.data.dataset import Dataset
    from patchlens.evaluate import VariantSpecs, score_layers
    from patchlens.features.store import FeatureStore
    from patchlens.tasks.registry import get_task

    fb.GRID = grid
    fb.generate(work, n_train, n_query, channels)
    specs = VariantSpecs(VARIANTS, work / "variance.h5")
    with FeatureStore(work / "features.h5") as store:
        t0 = time.perf_counter()
        score_layers(get_task("fewshot_seg"), store, Dataset(work / "data"), specs,
                     {"seeds": [0]}, device=device)
        _sync(device)
    return time.perf_counter() - t0


def job_tracking(n_frames: int, grid: tuple[int, int], channels: int, device: str) -> float:
    """Seconds to propagate a 3-object seed through ``n_frames`` generated frames for all seven
    variants (one shared product per band, :class:`~patchlens.evaluation.affinity.
    VariantAffinity`), every variant's soft map upsampled to the frame and arg-maxed, on
    ``device`` (the torch twin off the CPU), as the tracking job runs them."""
    from patchlens.evaluation import propagation, propagation_torch
    from patchlens.evaluation.affinity import VariantAffinity
    from patchlens.features.variants import variant_spec

    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((*grid, channels)).astype(np.float16)
              for _ in range(n_frames)]
    flat = np.concatenate([f.reshape(-1, channels) for f in frames[:8]]).astype(np.float64)
    specs = {v: variant_spec(v, flat.mean(0), flat.var(0)) for v in VARIANTS}
    seed = np.eye(4, dtype=np.float32)[rng.integers(0, 4, grid)]
    on_device = device != "cpu"
    aff = VariantAffinity(specs, channels, device, torch_backend=on_device)
    mod = propagation_torch if on_device else propagation
    size = (grid[0] * 16, grid[1] * 16)
    t0 = time.perf_counter()
    for softs in propagation.track_variants(iter(frames), seed, aff):
        for soft in softs.values():
            mod.labels_to_mask(soft, size)
    _sync(device)
    return time.perf_counter() - t0


def similarity_check(n_bank: int, n_query: int, channels: int, device: str, k: int = 20):
    """(TFLOP/s of the device's products, max |score difference| against the CPU path on a
    slice, share of identical neighbour lists on it)."""
    from patchlens.evaluation.similarity import VariantIndex
    from patchlens.features.variants import variant_spec

    rng = np.random.default_rng(1)
    bank = rng.standard_normal((n_bank, channels)).astype(np.float16)
    bank[:, :4] *= 30
    q = rng.standard_normal((n_query, channels)).astype(np.float16)
    q[:, :4] *= 30
    b32 = bank.astype(np.float64)
    specs = {v: variant_spec(v, b32.mean(0), b32.var(0)) for v in VARIANTS}
    index = VariantIndex(bank, specs, device=device, backend="torch")
    index.search(q[:256], k)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    found = index.search(q, k)
    _sync(device)
    secs = time.perf_counter() - t0
    # zscore on float16 hardware: three products (hi/lo split); raw + drops: one
    n_products = len(index.families) + (2 if index.half else 0)
    tflops = 2.0 * n_query * n_bank * channels * n_products / secs / 1e12
    cut = min(n_query, 512)
    ref = VariantIndex(bank.astype(np.float32), specs, "cpu", "faiss").search(q[:cut], k)
    diff = max(float(np.abs(found[v][0][:cut] - ref[v][0]).max()) for v in VARIANTS)
    same = np.mean([np.mean([set(a) == set(b) for a, b in zip(found[v][1][:cut], ref[v][1])])
                    for v in VARIANTS])
    return tflops, diff, float(same), secs


def planned_seconds() -> dict:
    """{(rule, model): planned seconds} from patchlens.plan for benchmarks/rehearsal.yaml, or {}
    where the plan cannot be computed here (the plan package's public names only)."""
    try:
        import yaml

        from patchlens.plan import job_resources, plan

        cfg = yaml.safe_load((ROOT / "rehearsal.yaml").read_text())
        result = plan(cfg, tempfile.mkdtemp())
        out = {}
        for rule, model, ds in (("extract_features", "vit_b16", "still"),
                                ("extract_features", "vit_b8", "still"),
                                ("fewshot_seg", "vit_b16", "still"),
                                ("fewshot_seg", "vit_b8", "still"),
                                ("tracking", "vit_b16", "video")):
            r = job_resources(result, rule, model, ds, gpu_tflops=400.0)
            out[(rule, model)] = r["runtime"] * 60 / 2  # runtime is 2x the planned seconds
        return out
    except Exception as exc:  # the plan is being refactored: leave the column empty
        print(f"(planned seconds unavailable: {type(exc).__name__}: {exc})")
        return {}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cut", type=float, default=50.0, help="divide VOC/DAVIS image counts")
    ap.add_argument("--small", action="store_true", help="tiny shapes (smoke test)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.getLogger("patchlens").setLevel(logging.ERROR)  # generated classes run short
    dev = args.device
    work = args.work or Path(tempfile.mkdtemp(prefix="rehearsal-"))
    small = args.small
    size = 64 if small else 448
    n_ext = 4 if small else math.ceil((VOC["train"] + VOC["val"]) / args.cut)
    n_query = 3 if small else math.ceil(VOC["val"] / args.cut)
    n_train = 30 if small else 160
    frames = 4 if small else math.ceil(VOC["frames"] / args.cut)
    channels = 32 if small else 768
    rows = []
    plan_s = {} if small else planned_seconds()

    def record(job, model, fn):
        _reset_peak(dev)
        secs = fn()
        rows.append({"job": job, "model": model, "s": secs,
                     "planned_s": plan_s.get((job, model)), "peak_gb": _peak_gb(dev)})
        planned = "" if rows[-1]["planned_s"] is None else f"{rows[-1]['planned_s']:.0f}"
        peak = "" if rows[-1]["peak_gb"] is None else f"{rows[-1]['peak_gb']:.1f}"
        print(f"{job:17s} {model:8s} measured {secs:8.1f} s   planned {planned:>8s} s   "
              f"peak GPU {peak} GB", flush=True)

    for model, (_, patch) in MODELS.items():
        record("extract_features", model,
               lambda: job_extract(model, n_ext, size, 2 if small else 32, dev,
                                   **({"depth": 2, "embed_dim": 64, "num_heads": 2}
                                      if small else {})))
    for model, (_, patch) in MODELS.items():
        g = (size // patch, size // patch) if not small else (4, 4)
        record("fewshot_seg", model,
               lambda: job_fewshot(work / model, n_train, n_query, g, channels, dev))
    g_track = (4, 6) if small else (480 // 16, 832 // 16)
    record("tracking", "vit_b16", lambda: job_tracking(frames, g_track, channels, dev))
    nb, nq = (600, 200) if small else (100 * 56 * 56, 16384)
    tflops, diff, same, secs = similarity_check(nb, nq, channels, dev)
    print(f"similarity products ({nq} x {nb} x {channels}, 7 variants): {tflops:.2f} TFLOP/s "
          f"in {secs:.2f} s; device vs CPU path on a slice: max |score diff| {diff:.2e}, "
          f"identical neighbour sets {100 * same:.1f}%")
    rows.append({"job": "similarity", "model": "-", "s": secs, "tflops": tflops,
                 "max_diff": diff, "same_neighbours": same, "peak_gb": _peak_gb(dev)})
    return rows


if __name__ == "__main__":
    main()
