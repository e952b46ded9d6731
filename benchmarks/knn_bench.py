"""Exact cosine k-NN throughput against this machine's fp32 matmul rate (target >= 80%).

The few-shot segmentation shape of config.yaml per (layer, seed, variant) is about 1.1 M query
patches x 70 k support patches x C; here a slice of it: ``--nq`` queries x ``--ns`` support x C.
FLOPs = 2 nq ns C (the similarity matmul; the top-k is not counted). Backends: faiss (the CPU
default), torch (the GPU path, here on the CPU; on CUDA with --device cuda).

    python benchmarks/knn_bench.py --nq 16384 --ns 32768 --dim 768 --k 20

``--variants raw zscore drop1 ...`` also times the search under all those variants: one
:class:`~patchlens.evaluation.similarity.VariantIndex` (raw and every drop{m} from one product,
zscore from one more) against one faiss index per transformed copy (the evaluator before issue 20).
"""
import argparse
import time

import numpy as np

from patchlens.evaluation.knn import CosineIndex
from patchlens.evaluation.similarity import VariantIndex
from patchlens.features.variants import apply_variant, variant_spec


def rate(fn, flop, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flop / best / 1e9, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nq", type=int, default=16384)
    ap.add_argument("--ns", type=int, default=32768)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="*", default=[])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((args.ns, args.dim), dtype=np.float32)
    q = rng.standard_normal((args.nq, args.dim), dtype=np.float32)
    flop = 2.0 * args.nq * args.ns * args.dim
    a, b = q[:4096], bank.T.copy()
    mm, _ = rate(lambda: a @ b, 2.0 * 4096 * args.ns * args.dim, args.repeat)
    print(f"fp32 matmul (numpy, 4096 x {args.dim} x {args.ns}): {mm:.1f} GFLOP/s")
    for backend in ("faiss", "torch"):
        index = CosineIndex(bank, backend=backend, device=args.device)
        g, s = rate(lambda: index.search(q, args.k), flop, args.repeat)
        print(f"k-NN {backend:5s} ({args.nq} x {args.ns} x {args.dim}, k={args.k}): "
              f"{g:.1f} GFLOP/s in {s:.2f} s = {100 * g / mm:.0f}% of the matmul rate")
    if args.variants:
        mean, var = bank.mean(0), bank.var(0)

        def one_by_one():
            for v in args.variants:
                CosineIndex(apply_variant(bank, v, mean, var), backend="faiss").search(
                    apply_variant(q, v, mean, var), args.k)

        specs = {v: variant_spec(v, mean, var) for v in args.variants}
        _, t_old = rate(one_by_one, flop, args.repeat)
        _, t_new = rate(lambda: VariantIndex(bank, specs, args.device).search(q, args.k), flop,
                        args.repeat)
        print(f"{len(args.variants)} variants: one faiss index each {t_old:.2f} s, one "
              f"VariantIndex {t_new:.2f} s ({t_old / t_new:.2f}x)")


if __name__ == "__main__":
    main()
