"""Exact vs approximate search for Hummingbird's memory bank: seconds and recall@k.

Synthetic clustered patch features (a mixture of ``--clusters`` Gaussian classes in ``--dim``
channels, as patch tokens cluster by semantic class), a memory bank of ``--memory`` patches and
``--queries`` query patches; exact search (``CosineIndex``, faiss ``IndexFlatIP``) against the
approximate indexes of ``patchlens.evaluation.ann`` (IVF at ``nprobe`` 16, HNSW at the task's
defaults). Prints build and search seconds and the recall@k against exact search, the number the
task writes as its ``recall_at_k`` metric.

    python benchmarks/hummingbird_bench.py [--memory 50000] [--queries 2000] [--dim 384] [--k 30]
"""
from __future__ import annotations

import argparse
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = {"memory": 50_000, "queries": 2_000, "dim": 384, "clusters": 150, "k": 30}
    for name, default in sizes.items():  # memory patches, query patches, channels, ...
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    import numpy as np

    from patchlens.evaluation.ann import ApproxCosineIndex, recall_at_k
    from patchlens.evaluation.knn import CosineIndex
    from patchlens.tasks.hummingbird import DEFAULT_PARAMS as P

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)

    def draw(n):
        return centres[rng.integers(args.clusters, size=n)] + \
            rng.standard_normal((n, args.dim)).astype(np.float32)

    bank, queries = draw(args.memory), draw(args.queries)
    print(f"memory {args.memory} x {args.dim}, {args.queries} queries, k = {args.k}, "
          f"{args.clusters} clusters")
    t0 = time.perf_counter()
    exact = CosineIndex(bank, backend="faiss", device="cpu")
    t1 = time.perf_counter()
    _, ref = exact.search(queries, args.k)
    t2 = time.perf_counter()
    print(f"exact : build {t1 - t0:6.2f} s, search {t2 - t1:6.2f} s")
    for kind, kw in (("ivf", {"nprobe": P["nprobe"]}),
                     ("hnsw", {"hnsw_m": P["hnsw_m"], "ef_search": P["ef_search"]})):
        t0 = time.perf_counter()
        index = ApproxCosineIndex(bank, kind, **kw)
        t1 = time.perf_counter()
        _, idx = index.search(queries, args.k)
        t2 = time.perf_counter()
        extra = f" (nlist {index.nlist}, nprobe {kw['nprobe']})" if kind == "ivf" else \
            f" (M {kw['hnsw_m']}, efSearch {kw['ef_search']})"
        print(f"{kind:5s} : build {t1 - t0:6.2f} s, search {t2 - t1:6.2f} s, recall@{args.k} "
              f"{recall_at_k(idx, ref).mean():.4f}{extra}")


if __name__ == "__main__":
    main()
