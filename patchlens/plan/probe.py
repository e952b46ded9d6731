"""The machine probe: this machine's rates for the cost model, measured in a few seconds on the
shapes that dominate a study (``patchlens plan`` runs it unless the rates are given)."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from patchlens.data.sizes import split_counts
from patchlens.plan.facts import model_facts, vit_flop
from patchlens.plan.hours import RENDER_S_PER_MPIX


def probe(seconds: float = 3.0, path: str | os.PathLike | None = None,
          scenes: bool = True) -> dict:
    """This machine's fp32 matmul GFLOP/s (numpy BLAS, every core), sequential read MB/s (a
    128 MiB file written, dropped from the page cache where the OS allows, read back), the
    start-up of a job's process (a fresh interpreter importing what the scripts import, without
    and with torch + timm) and, with ``scenes``, the s per megapixel of generating them."""
    import subprocess
    import sys

    import numpy as np

    from patchlens.evaluation.davis_metrics import jf_labels
    from patchlens.evaluation.probes import LinearProbe
    from patchlens.evaluation.propagation import labels_to_mask
    from patchlens.evaluation.upsample import upsample_argmax
    from patchlens.features.channel_stats import merge_moments

    m, c, n = 4096, 384, 8192  # the shape of the k-NN that dominates a study: queries x support
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, c), dtype=np.float32)
    b = rng.standard_normal((c, n), dtype=np.float32)
    a @ b  # warm up the BLAS threads
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds * 0.6:
        a @ b
        reps += 1
    gflops = 2.0 * m * c * n * reps / (time.perf_counter() - t0) / 1e9
    size = 128 * 2 ** 20
    with tempfile.NamedTemporaryFile(dir=path, delete=True) as tmp:
        tmp.write(os.urandom(size))
        tmp.flush()
        os.fsync(tmp.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(tmp.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        with open(tmp.name, "rb", buffering=0) as fh:
            while fh.read(8 * 2 ** 20):
                pass
        mbps = size / (time.perf_counter() - t0) / 1e6
    base = "import snakemake.script, numpy, pandas, h5py, patchlens.evaluate"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", base], check=True, capture_output=True)
    startup = {"python": time.perf_counter() - t0}
    # the model rules: the same imports with torch and timm, then the forward rate of a real ViT
    # (ViT-S/16 at 448 px, 2 images, every core): torch's kernels, not numpy's BLAS
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _FORWARD_PROBE], check=True, capture_output=True,
                         text=True).stdout
    fwd = json.loads(out.strip().splitlines()[-1])
    per_image = fwd["forward_s"] / fwd["images"]
    # imports, then the first forward pass's extra time (kernel selection, allocation)
    startup["torch"] = (time.perf_counter() - t0 - fwd["after_imports_s"]
                        + max(0.0, fwd["first_s"] - per_image))
    forward = vit_flop(model_facts({"timm": "vit_small_patch16_224"}), (28, 28)) / per_image / 1e9
    build = fwd["build_s"] / fwd["mparams"]
    n, k = 4096, 21  # the linear probe of few-shot segmentation: support patches x C -> K + 1
    xs, ys = a, rng.integers(0, k, m)
    LinearProbe.fit(xs[:256], ys[:256], k, 1e-4, 3)  # warm-up
    t0 = time.perf_counter()
    fit = LinearProbe.fit(xs, ys, k, 1e-4, 30)
    lbfgs = fit.n_evals * 2 * 2.0 * n * c * k / (time.perf_counter() - t0) / 1e9
    scores = _prediction_scores((28, 28), k)
    upsample_argmax(scores, (448, 448))
    t0 = time.perf_counter()
    for _ in range(5):
        upsample_argmax(scores, (448, 448))
    upsample = (time.perf_counter() - t0) / (5 * 448 * 448 * k) * 1e9
    x16 = rng.standard_normal((8 * 784, c), dtype=np.float32).astype(np.float16)
    runs = []
    for _ in range(4):  # the first allocates; the median of the others
        t0 = time.perf_counter()
        merge_moments(0, np.zeros(c), np.zeros(c), x16.astype(np.float32))
        runs.append(time.perf_counter() - t0)
    reduce = float(np.median(runs[1:])) / x16.size * 1e9
    select = _select_ns(rng)

    soft = rng.random((30, 54, 3), dtype=np.float32)  # a DAVIS frame: 2 objects + background
    gt = np.zeros((480, 854), np.int64)
    gt[100:300, 100:400], gt[250:450, 500:800] = 1, 2
    t0 = time.perf_counter()
    for _ in range(3):
        jf_labels(gt, labels_to_mask(soft, gt.shape), 2)
    track = (time.perf_counter() - t0) / (3 * 480 * 854 * 3) * 1e9
    render = RENDER_S_PER_MPIX
    if scenes:  # a warm-up set, then 8 + 24 crops at 256 px with the generator's default classes
        from patchlens.data.scenes import generate_scenes

        sets = {k: 0 for k in ("n_val", "n_gallery", "n_videos", "n_pairs", "n_shots_max")}
        with tempfile.TemporaryDirectory(dir=path) as out:
            generate_scenes(Path(out) / "warm", {**sets, "image_size": 64, "n_train": 1})
            t0 = time.perf_counter()
            generate_scenes(Path(out) / "probe", {**sets, "image_size": 256, "n_train": 8})
            n = sum(split_counts({"source": "scenes", "params": {
                **sets, "image_size": 256, "n_train": 8}}).values())
            render = (time.perf_counter() - t0) / (n * 256 * 256 / 1e6)
    return {"cpu_gflops": gflops, "read_mbps": mbps, "cores": os.cpu_count() or 1,
            "forward_gflops": forward, "build_s_per_mparam": build, "lbfgs_gflops": lbfgs,
            "upsample_ns": upsample, "track_ns": track, "select_ns": select,
            "reduce_ns": reduce,
            "startup_s": startup, "render_s_per_mpix": render}


def _prediction_scores(grid: tuple[int, int], k: int, seed: int = 0):
    """Class scores (h, w, k) shaped like a segmentation head's: two rectangular objects on
    background, each class's score 1 on its cells, plus uniform noise of 1.05, which makes
    some cells' arg-max another class. 13% of the cells have corners that disagree: the pixels
    the upsampling's arg-max mixes (:func:`patchlens.evaluation.upsample.bilinear_argmax`);
    a prediction with more boundary costs more per pixel."""
    import numpy as np

    h, w = grid
    lab = np.zeros(grid, np.int64)
    lab[h // 5:h // 2, w // 4:3 * w // 4], lab[h // 2:, :w // 3] = 1, 2
    rng = np.random.default_rng(seed)  # one map, whatever was drawn before
    return np.eye(k, dtype=np.float32)[lab] + 1.05 * rng.random((h, w, k), dtype=np.float32)


def _select_ns(rng, nq: int = 1024, n: int = 32768, c: int = 384) -> float:
    """ns per similarity value and variant that the shared similarity code spends beyond its
    products (:class:`patchlens.evaluation.similarity.VariantIndex` on the CPU: the channel
    blocks' accumulation, the division by the norms, faiss's top-k heaps), for ``config.yaml``'s
    seven variants: its search timed, minus its two products (raw and zscore) timed alone."""
    import numpy as np

    from patchlens.evaluation.similarity import VariantIndex
    from patchlens.features.variants import variant_spec

    scale = np.linspace(0.5, 3.0, c, dtype=np.float32)  # unequal channel variances
    bank = (rng.standard_normal((n, c), dtype=np.float32) * scale).astype(np.float16)
    queries = (rng.standard_normal((nq, c), dtype=np.float32) * scale).astype(np.float16)
    bank, queries = bank.astype(np.float32), queries.astype(np.float32)
    mean, var = bank.mean(0, dtype=np.float64), bank.var(0, dtype=np.float64)
    names = ["raw", "zscore", "drop1", "drop2", "drop4", "drop8", "drop16"]
    index = VariantIndex(bank, {v: variant_spec(v, mean, var) for v in names})
    index.search(queries[:64], 20)  # warm-up
    search, product = [], []
    bank_t = np.ascontiguousarray(bank.T)
    out = queries @ bank_t  # the products into a warm block: BLAS's own rate, no page faults
    for _ in range(3):
        t0 = time.perf_counter()
        index.search(queries, 20)
        search.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(2):
            np.matmul(queries, bank_t, out=out)
        product.append(time.perf_counter() - t0)
    return max(min(search) - min(product), 0.0) / (nq * n * len(names)) * 1e9


_FORWARD_PROBE = """
import json, time
t0 = time.perf_counter()
import snakemake.script, numpy, pandas, h5py, patchlens.evaluate, torch, timm
t1 = time.perf_counter()
m = timm.create_model("vit_small_patch16_224", pretrained=False, dynamic_img_size=True).eval()
tb = time.perf_counter()
x = torch.randn(2, 3, 448, 448)
with torch.inference_mode():
    m.forward_features(x[:1])
    t2 = time.perf_counter()
    m.forward_features(x)
    t3 = time.perf_counter()
print(json.dumps({"after_imports_s": t3 - t1, "build_s": tb - t1, "first_s": t2 - tb,
                  "forward_s": t3 - t2, "images": 2,
                  "mparams": sum(p.numel() for p in m.parameters()) / 1e6}))
"""
