"""The few-shot linear probe (patchlens.evaluation.probes.LinearProbe.fit) with scipy's BLAS on one
thread (what the probe does) against every BLAS library on all threads (the default).

L-BFGS-B's own updates are small vector operations in scipy's BLAS; on more threads that pool
competes with numpy's (the objective's two matmuls) for the cores. Features: low-rank plus noise,
standardised the way the probe does it, so that L-BFGS runs its full iteration count as it does
on ViT features (random Gaussian features stop early).

    python benchmarks/probe_bench.py --n 6272 --dim 384 --classes 13 --iters 100 --repeat 3
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

import patchlens.evaluation.probes as probes


def features(n: int, dim: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    basis = rng.standard_normal((16, dim)).astype(np.float32)
    centres = rng.standard_normal((classes, 16)).astype(np.float32)
    x = (centres[y] + rng.standard_normal((n, 16)).astype(np.float32)) @ basis
    return x + 0.3 * rng.standard_normal((n, dim)).astype(np.float32), y


def best_of(repeat: int, fn) -> tuple[float, int]:
    times, evals = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        evals = fn().n_evals
        times.append(time.perf_counter() - t0)
    return min(times), evals


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6272, help="support patches (8 images of 28x28)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=13)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    x, y = features(args.n, args.dim, args.classes)

    def fit():
        return probes.LinearProbe.fit(x, y, args.classes, 1e-4, args.iters)

    fit()  # warm-up
    one, evals = best_of(args.repeat, fit)
    limit = probes.optimizer_blas_on_one_thread
    probes.optimizer_blas_on_one_thread = contextlib.nullcontext
    try:
        default, _ = best_of(args.repeat, fit)
    finally:
        probes.optimizer_blas_on_one_thread = limit
    flop = evals * 2 * 2.0 * args.n * args.dim * args.classes
    print(f"{args.n} x {args.dim} -> {args.classes}, {evals} evaluations: every BLAS on all "
          f"threads {default:.3f} s ({flop / default / 1e9:.1f} GFLOP/s); scipy's BLAS on one "
          f"thread {one:.3f} s ({flop / one / 1e9:.1f} GFLOP/s); speed-up {default / one:.2f}x")


if __name__ == "__main__":
    main()
