"""Benchmark: minibatch linear CKA over all layer pairs of two 12-layer models.

Synthetic features with shared structure: a latent z (n, 64) common to both models; layer l of
each model is z @ W_l + noise, with the noise growing with depth for model A and shrinking for
model B (so the CKA matrix has a visible structure). 10,000 samples x 768 channels, batch 256
by default. Features are generated per minibatch set, as cka_layers reads them, so the benchmark
holds one set of features at a time; no n x n Gram over the whole sample set is built
(per set: 12 layers x set_size x batch_size float64 Grams).

Prints the wall and CPU time of the CKA computation (time spent generating data is measured in
the same run and excluded), the tracemalloc peak of Python/numpy allocations and the process peak
RSS (ru_maxrss). The machine may be shared: ``--repeat N`` reports the best of N runs.

    python benchmarks/cka_bench.py --repeat 3       # in-memory sets (core estimator)
    python benchmarks/cka_bench.py --stores         # also via HDF5 feature stores + cka_layers
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from patchlens.analysis.cka import batch_splits, minibatch_cka_matrix


def make_layers(model: int, n_layers: int, z: np.ndarray, channels: int, seed: int, set_index: int):
    """Yield one (m, channels) float32 layer at a time for one set (deterministic per seed)."""
    latent = z.shape[1]
    for layer in range(n_layers):
        w = np.random.default_rng([seed, model, layer]).normal(size=(latent, channels))
        rng = np.random.default_rng([seed, model, layer, set_index])
        depth = layer / max(1, n_layers - 1)
        noise = 0.5 + 3.0 * (depth if model == 0 else 1 - depth)
        x = z @ w.astype(np.float32)
        x += noise * rng.standard_normal(x.shape, dtype=np.float32)
        yield x


def sets(n, n_layers, channels, set_size, seed, latent=64):
    n_sets = max(1, -(-n // set_size))
    for si, part in enumerate(np.array_split(np.arange(n), n_sets)):
        z = np.random.default_rng([seed, 99, si]).standard_normal((len(part), latent),
                                                                  dtype=np.float32)
        yield (make_layers(0, n_layers, z, channels, seed, si),
               make_layers(1, n_layers, z, channels, seed, si))


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


class GenTimer:
    """Wrap the synthetic layer generators and add up the time spent producing data, so that
    the CKA time of the same run is total - generation."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def wrap(self, it):
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                x = next(it)
            except StopIteration:
                return
            finally:
                self.wall += time.perf_counter() - t0
                self.cpu += time.process_time() - c0
            yield x

    def sets(self, a):
        for la, lb in sets(a.n, a.layers, a.channels, a.set_size, a.seed):
            yield self.wrap(la), self.wrap(lb)


def run_core(a):
    runs = []
    for rep in range(a.repeat):  # the machine is shared: report the best of a.repeat runs
        if rep == 0:
            tracemalloc.start()
        gen = GenTimer()
        t0, c0 = time.perf_counter(), time.process_time()
        mat = minibatch_cka_matrix(gen.sets(a), batch_size=a.batch_size, seed=a.seed)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append((wall - gen.wall, cpu - gen.cpu, gen.wall))
        if rep == 0:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    cka_wall, cka_cpu, gen_wall = min(runs)
    n_batches = sum(len(batch_splits(len(p), a.batch_size))
                    for p in np.array_split(np.arange(a.n), max(1, -(-a.n // a.set_size))))
    gflop = 2 * a.layers * n_batches * (a.n / n_batches) ** 2 * a.channels * 2 / 1e9
    print(f"core: {a.layers}x{a.layers} layer pairs, n={a.n}, C={a.channels}, "
          f"batch={a.batch_size}, set_size={a.set_size}, minibatches={n_batches}, "
          f"Gram products ~{gflop:.0f} GFLOP")
    print(f"core: CKA {cka_wall:.2f} s wall, {cka_cpu:.2f} s process CPU (best of {a.repeat}; "
          f"data generation {gen_wall:.2f} s excluded; all runs (wall, cpu, gen): "
          f"{[tuple(round(v, 2) for v in r) for r in runs]}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"core: tracemalloc peak {peak / 2**20:.0f} MiB; a whole-set n x n float64 Gram would "
          f"be {a.n**2 * 8 / 2**20:.0f} MiB per layer")
    print("core: CKA diagonal (layer l vs l):", np.round(np.diag(mat), 3).tolist())


def run_stores(a):
    from patchlens.analysis.cka_stores import cka_layers
    from patchlens.features.store import FeatureStore, FeatureWriter

    g = 4
    n_img = a.n // (g * g)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        t0 = time.perf_counter()
        for model in (0, 1):
            path = Path(tmp) / f"m{model}" / "bench.h5"
            ims = [f"im{i:05d}" for i in range(n_img)]
            with FeatureWriter(path, ims, list(range(a.layers)), (g, g), a.channels, False,
                               {"model": f"m{model}", "patch_size": 16}) as w:
                for si, lo in enumerate(range(0, n_img, 64)):
                    b = min(64, n_img - lo)
                    z = np.random.default_rng([a.seed, 99, si]).standard_normal(
                        (b * g * g, 64), dtype=np.float32)
                    toks = np.stack(list(make_layers(model, a.layers, z, a.channels, a.seed, si)),
                                    axis=1).reshape(b, g * g, a.layers, a.channels)
                    w.write(toks.transpose(0, 2, 1, 3))
            paths.append(path)
        t_write = time.perf_counter() - t0
        sa, sb = FeatureStore(paths[0]), FeatureStore(paths[1])
        t0 = time.perf_counter()
        df = cka_layers(sa, sb, params={"levels": ["patch"], "max_patches_per_image": g * g,
                                        "batch_size": a.batch_size, "set_size": a.set_size,
                                        "seed": a.seed})
        t_cka = time.perf_counter() - t0
        print(f"stores: {n_img} images x {g * g} patches = {n_img * g * g} samples; writing "
              f"two float16 stores {t_write:.1f} s; cka_layers (read + CKA) {t_cka:.2f} s, "
              f"{len(df)} rows")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--channels", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--set-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="report the best of N runs")
    ap.add_argument("--stores", action="store_true",
                    help="also time cka_layers on two HDF5 feature stores")
    a = ap.parse_args(argv)
    run_core(a)
    if a.stores:
        run_stores(a)
    print(f"peak RSS (ru_maxrss) {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
