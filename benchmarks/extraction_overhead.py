"""Extraction overhead: all-layer extraction to HDF5 vs a bare forward pass (target <= 1.10).

(a) bare forward: ``model.forward_features`` on the same images, already decoded and normalised
    in memory (pure compute, the strictest baseline);
(a') a plain inference loop: decode + resize + normalise each batch, then ``forward_features``;
(b) ``patchlens.features.extract.extract``: model construction, image decoding/resizing (one
    batch ahead, in a thread), one forward pass that keeps every block's tokens (and the
    final-norm entry), float16 conversion, the streaming per-split channel moments, the HDF5
    write with Fletcher-32 chunk checksums, and the read-back check of the closed file.
Same model (ViT-S/16, random init, 224x224), same images, same torch thread count; best of
``--repeats`` runs, (a), (a') and (b) interleaved so that machine load affects them alike. Wall
time is the target's measure; the CPU time of the process (all threads) is printed beside it,
being less sensitive to other load on a shared machine (with ``--threads 1`` its ratio is the
work extraction adds to the forward pass).

    python benchmarks/extraction_overhead.py --images 192 --threads 2 --repeats 3
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage import data as skdata

from patchlens.data.dataset import Dataset
from patchlens.features.extract import extract, load_batch
from patchlens.models.resolve import build_timm, resolve_model


def make_dataset(root: Path, n: int) -> Dataset:
    """n distinct 256x256 crops of scikit-image's bundled pictures."""
    sources = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        src = sources[i % len(sources)]
        y, x = rng.integers(0, src.shape[0] - 256), rng.integers(0, src.shape[1] - 256)
        Image.fromarray(src[y:y + 256, x:x + 256]).save(root / f"{i}.png")
        rows.append(dict(image=str(i), path=f"{i}.png", split="val", semantic="", instance="",
                         sequence="", frame=-1, height=256, width=256, labels="", uv=""))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame({"class": [0], "name": ["background"]}).to_csv(root / "classes.csv", index=False)
    return Dataset(root)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = resolve_model("bench", {"timm": args.model, "pretrained": False})
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_dataset(Path(tmp), args.images)
        model = build_timm(spec)
        batches = [torch.from_numpy(load_batch(ds, ds.images[i:i + args.batch_size], (224, 224),
                                               spec["mean"], spec["std"]))
                   for i in range(0, args.images, args.batch_size)]
        with torch.inference_mode():
            model.forward_features(batches[0])  # warm-up
        bare, loop, full = [], [], []
        cpu = {"a": [], "a2": [], "b": []}

        def timed(times, key, fn):
            t, c = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t)
            cpu[key].append(time.process_time() - c)

        def forward_only():
            with torch.inference_mode():
                for x in batches:
                    model.forward_features(x)

        def decode_forward():
            with torch.inference_mode():
                for i in range(0, args.images, args.batch_size):
                    x = load_batch(ds, ds.images[i:i + args.batch_size], (224, 224),
                                   spec["mean"], spec["std"])
                    model.forward_features(torch.from_numpy(x))

        for _ in range(args.repeats):
            timed(bare, "a", forward_only)
            timed(loop, "a2", decode_forward)
            timed(full, "b", lambda: extract(spec, ds, Path(tmp) / "f.h5", 224,
                                             batch_size=args.batch_size, progress=False))
        a, a2, b = min(bare), min(loop), min(full)
        ca, ca2, cb = min(cpu["a"]), min(cpu["a2"]), min(cpu["b"])
        size_mb = (Path(tmp) / "f.h5").stat().st_size / 2**20
    print(f"model {args.model}, {args.images} images, batch {args.batch_size}, "
          f"{args.threads} threads, best of {args.repeats}")
    print(f"(a) bare forward          {a:7.2f} s  {args.images / a:6.1f} img/s")
    print(f"(a') decode + forward     {a2:7.2f} s  {args.images / a2:6.1f} img/s")
    print(f"(b) extract all {spec['n_blocks']} layers  {b:7.2f} s  {args.images / b:6.1f} img/s"
          f"  ({size_mb:.0f} MiB HDF5)")
    print(f"ratio b/a = {b / a:.3f}  (target <= 1.10);  b/a' = {b / a2:.3f}")
    print(f"CPU seconds: (a) {ca:.2f}  (a') {ca2:.2f}  (b) {cb:.2f};  CPU ratio b/a = "
          f"{cb / ca:.3f}  b/a' = {cb / ca2:.3f}")


if __name__ == "__main__":
    main()
