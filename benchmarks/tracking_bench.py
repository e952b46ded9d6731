"""Seconds per frame of DAVIS label propagation and of its J/F evaluation, at DAVIS size.

Synthetic sequence: 480x854 frames, a 30x54 patch grid (ViT/16 at 480x864), 384 channels (ViT-S),
3 moving elliptic objects; DAVIS defaults (first + 7 last frames as context, radius 12, top-5).
Propagation (``propagation.track_variants`` with one raw variant, as the task runs it) and evaluation (``labels_to_mask`` + ``jf_labels`` per frame)
are timed separately; no file I/O is included. ``--engine numpy`` is the CPU default of the
task; ``--engine torch`` runs the device path (``patchlens.evaluation.propagation_torch`` and
``davis_torch``) on ``--device`` (``cpu`` or ``cuda``), timed with the device synchronised, and
checks its J and F against the numpy path's on the same frames.

    python benchmarks/tracking_bench.py [--frames 20] [--channels 384] [--threads N]
        [--engine numpy|torch|both] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--grid", type=int, nargs=2, default=(30, 54))
    ap.add_argument("--objects", type=int, default=3)
    ap.add_argument("--engine", choices=("numpy", "torch", "both"), default="both")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads (sets OMP/OPENBLAS/MKL_NUM_THREADS before numpy loads)")
    return ap.parse_args()


def synthetic(args, rng):
    import numpy as np

    from patchlens.evaluation.upsample import resize_nearest
    T, H, W, (h, w), C, n = args.frames, args.height, args.width, args.grid, args.channels, \
        args.objects
    yy, xx = np.mgrid[:H, :W]
    masks = np.zeros((T, H, W), np.uint8)
    start = rng.uniform([0.25 * H, 0.2 * W], [0.75 * H, 0.8 * W], (n, 2))
    vel = rng.uniform(-6, 6, (n, 2))
    radii = rng.uniform([40, 60], [90, 140], (n, 2))
    for t in range(T):
        for k in range(n):
            cy, cx = start[k] + t * vel[k]
            masks[t][((yy - cy) / radii[k, 0]) ** 2 + ((xx - cx) / radii[k, 1]) ** 2 <= 1] = k + 1
    codes = rng.standard_normal((n + 1, C)).astype(np.float32)
    feats = np.empty((T, h, w, C), np.float32)
    for t in range(T):
        small = resize_nearest(masks[t], (h, w))
        feats[t] = codes[small] + 0.8 * rng.standard_normal((h, w, C)).astype(np.float32)
    return masks, feats


def main():
    args = parse()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np

    from patchlens.evaluation import propagation
    from patchlens.evaluation.affinity import VariantAffinity
    from patchlens.features.variants import variant_spec
    from patchlens.tasks import tracking
    from patchlens.evaluation.davis_metrics import jf_labels

    rng = np.random.default_rng(0)
    masks, feats = synthetic(args, rng)
    ids = np.arange(1, args.objects + 1)
    seed = propagation.seed_labels(masks[0], ids, tuple(args.grid))
    p = tracking.DEFAULT_PARAMS
    print(f"frames {args.frames} at {args.height}x{args.width}, grid {args.grid[0]}x{args.grid[1]}"
          f", {args.channels} channels, {args.objects} objects, context 1+{p['n_last_frames']}, "
          f"radius {p['size_mask_neighborhood']}, top-{p['topk']}")
    args_t = (p["n_last_frames"], p["size_mask_neighborhood"], p["topk"], p["temperature"])
    scores = {}
    if args.engine in ("numpy", "both"):
        t0 = time.perf_counter()
        aff = VariantAffinity({"raw": variant_spec("raw")}, args.channels)  # the task's path
        soft = [d["raw"] for d in propagation.track_variants(feats, seed, aff, *args_t)]
        t_prop = (time.perf_counter() - t0) / len(soft)
        t0 = time.perf_counter()
        js, fs = [], []
        for t, s in enumerate(soft, start=1):
            pred = propagation.labels_to_mask(s, masks[t].shape, p["norm_mask"])
            j, f = jf_labels(masks[t], pred, args.objects, None, p["bound_th"])
            js.append(j)
            fs.append(f)
        t_eval = (time.perf_counter() - t0) / len(soft)
        scores["numpy"] = (np.array(js), np.array(fs))
        print(f"numpy  cpu: propagation {t_prop:.3f} s/frame, J/F evaluation {t_eval:.3f} s/frame")
    if args.engine in ("torch", "both"):
        scores["torch"] = torch_path(args, masks, feats, seed, args_t, p)
    for name, (js, fs) in scores.items():
        print(f"(sanity) {name}: J&F of these noisy features {(js.mean() + fs.mean()) / 2:.4f}")
    if len(scores) == 2:
        d = max(np.abs(scores["numpy"][i] - scores["torch"][i]).max() for i in (0, 1))
        print(f"max |numpy - torch| over per-object J and F: {d:.2e}")


def torch_path(args, masks, feats, seed, args_t, p):
    import numpy as np
    import torch

    from patchlens.evaluation import davis_torch, propagation
    from patchlens.evaluation import propagation_torch as pt
    from patchlens.evaluation.affinity import VariantAffinity

    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    from patchlens.features.variants import variant_spec

    aff = VariantAffinity({"raw": variant_spec("raw")}, args.channels, dev, torch_backend=True)
    for _ in propagation.track_variants(feats[:3], seed, aff, *args_t):  # warm-up (kernels)
        pass
    sync()
    t0 = time.perf_counter()
    soft = [d["raw"] for d in propagation.track_variants(feats, seed, aff, *args_t)]
    sync()
    t_prop = (time.perf_counter() - t0) / len(soft)
    gts = [torch.tensor(m, device=dev).long() for m in masks]
    sync()
    t0 = time.perf_counter()
    js, fs = [], []
    for t, s in enumerate(soft, start=1):
        pred = pt.labels_to_mask(s, tuple(masks[t].shape), p["norm_mask"])
        j, f = davis_torch.jf_labels(gts[t], pred, args.objects, None, p["bound_th"])
        js.append(j)
        fs.append(f)
    sync()
    t_eval = (time.perf_counter() - t0) / len(soft)
    print(f"torch  {dev}: propagation {t_prop:.3f} s/frame, J/F evaluation {t_eval:.3f} s/frame"
          f" (torch threads {torch.get_num_threads()})")
    return np.array(js), np.array(fs)

if __name__ == "__main__":
    main()
