"""Cost of stored-file integrity (issue 18 item 4) and of the streaming channel moments (issue 20
item 4) on the write and read paths, in CPU seconds of this process (robust to a shared machine).

(1) FeatureWriter, tokens at ViT-S/16 224 px shapes (13 layer entries, 196 patches, 384 channels),
    batches of 16: the full writer (Fletcher-32 chunks, moments, read-back) against the same
    writer without Fletcher-32, and without the moments (sums handed in precomputed);
(2) an evaluator's read of one layer (``FeatureStore._f["tokens"][:, li]``, what
    ``FeatureStore.layer_view`` does) from a file with and without Fletcher-32;
(3) ``patchlens.io.read_table`` (SHA-256 verified) against ``pandas.read_parquet`` / ``read_csv``
    of the same units-sized table.
Best of ``--repeats``.

    python benchmarks/integrity_overhead.py --images 192 --repeats 3
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import patchlens.features.store as S
from patchlens.features.store import FeatureStore, FeatureWriter
from patchlens.io import read_table, write_csv, write_parquet


def cpu(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def write(path, tok, n, sums):
    images = [f"i{i}" for i in range(n)]
    b = tok.shape[0]
    with FeatureWriter(path, images, list(range(tok.shape[1])), (14, 14), tok.shape[-1], True,
                       {"model": "bench", "dataset": "bench"}) as w:
        for _ in range(n // b):
            w.write(tok, tok[:, :, 0], sums)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=500_000, help="rows of the table in (3)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tok = rng.normal(size=(16, 13, 196, 384)).astype(np.float16)
    zero = (np.zeros((16, 13, 384)), np.zeros((16, 13, 384)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = cpu(lambda: write(tmp / "a.h5", tok, args.images, None), args.repeats)
        no_moments = cpu(lambda: write(tmp / "b.h5", tok, args.images, zero), args.repeats)
        real = S.checksummed
        S.checksummed = lambda **kw: kw  # the same writer without Fletcher-32
        try:
            no_fletcher = cpu(lambda: write(tmp / "c.h5", tok, args.images, None), args.repeats)
        finally:
            S.checksummed = real
        reads = {}
        for name in ("a", "c"):
            with FeatureStore(tmp / f"{name}.h5") as s:
                reads[name] = cpu(lambda: [s._f["tokens"][:, li] for li in (0, 6, 12)],
                                  args.repeats) / 3
        df = pd.DataFrame({"unit": rng.integers(0, 10**6, args.rows),
                           "num": rng.random(args.rows), "den": rng.random(args.rows),
                           "metric": "map"})
        write_parquet(df, tmp / "u.parquet")
        write_csv(df.head(args.rows // 10), tmp / "s.csv")
        t_pq = cpu(lambda: pd.read_parquet(tmp / "u.parquet"), args.repeats)
        t_pq_v = cpu(lambda: read_table(tmp / "u.parquet"), args.repeats)
        t_csv = cpu(lambda: pd.read_csv(tmp / "s.csv"), args.repeats)
        t_csv_v = cpu(lambda: read_table(tmp / "s.csv"), args.repeats)
        mb = (tmp / "a.h5").stat().st_size / 2**20
    n = args.images
    print(f"(1) write {n} images ({mb:.0f} MiB), CPU s: full {full:.3f}; without Fletcher-32 "
          f"{no_fletcher:.3f} (checksum +{full - no_fletcher:.3f}); without moments "
          f"{no_moments:.3f} (moments +{full - no_moments:.3f})")
    print(f"(2) read one layer of {n} images, CPU s: Fletcher-32 {reads['a']:.4f} vs none "
          f"{reads['c']:.4f} ({reads['a'] / reads['c']:.2f}x)")
    print(f"(3) units parquet {args.rows} rows: verified {t_pq_v:.4f} vs pandas {t_pq:.4f} "
          f"({t_pq_v / t_pq:.2f}x); CSV {args.rows // 10} rows: {t_csv_v:.4f} vs "
          f"{t_csv:.4f} ({t_csv_v / t_csv:.2f}x)")


if __name__ == "__main__":
    main()
