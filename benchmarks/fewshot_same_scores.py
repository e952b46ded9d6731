"""Few-shot scores on the tiny test data, for comparing two versions of the code line by line.

Generates (once, under OUT) the scenes data set of tests/unit/real_scores.py (tiny.yaml's
generator parameters: 96 px, 12 train / 10 val images), its oracle, pixels and 3-block "deep"
feature files and their channel statistics over the train split, then scores few-shot
segmentation (tiny.yaml's params: seed 0, 2 shots) for all seven variants with
:func:`patchlens.evaluate.evaluate_all` of whichever patchlens is first on the path, into
OUT/LABEL/<model>/<variant>.csv; ``--compare A B`` prints the largest difference of value /
ci_low / ci_high between two labels.

    PYTHONPATH=/tmp/base python benchmarks/fewshot_same_scores.py /tmp/cmp base
    PYTHONPATH=$PWD      python benchmarks/fewshot_same_scores.py /tmp/cmp new
    python benchmarks/fewshot_same_scores.py /tmp/cmp --compare base new
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "tests" / "unit"))
VARIANTS = ["raw", "zscore", "drop1", "drop2", "drop4", "drop8", "drop16"]


def generate(root: Path) -> dict:
    import real_scores as rs

    from patchlens.data.dataset import Dataset

    data = root / "data" / "scenes"
    if not data.exists():
        rs.generate_scenes(data, rs.SCENES)
    ds = Dataset(data)
    feats = {}
    for m in ("oracle", "pixels"):
        feats[m] = root / "features" / m / "scenes.h5"
        if not feats[m].exists():
            feats[m].parent.mkdir(parents=True, exist_ok=True)
            rs.extract(rs.resolve_model(m, {"baseline": m, "patch_size": 16}), ds, feats[m], 96)
    feats["deep"] = root / "features" / "deep" / "scenes.h5"
    if not feats["deep"].exists():
        rs._deep_store(feats["oracle"], feats["deep"])
    return feats


def score(root: Path, label: str) -> None:
    import patchlens
    from patchlens.data.dataset import Dataset
    from patchlens.evaluate import evaluate_all
    from patchlens.features.channel_stats import channel_stats, write_stats
    from patchlens.features.store import FeatureStore

    print(f"patchlens from {Path(patchlens.__file__).parent}")
    feats = generate(root)
    data = root / "data" / "scenes"
    for m, f in feats.items():
        with FeatureStore(f) as st:
            c = st.channels
            mean, var, _ = channel_stats(st, Dataset(data).split("train"))
            write_stats(root / f"var_{m}.h5", st.layers, mean, var, {})
        vs = [v for v in VARIANTS if not v.startswith("drop") or int(v[4:]) < c]
        evaluate_all("fewshot_seg", {"seeds": [0], "n_shots": 2}, f, data,
                     {v: root / label / m / f"{v}.csv" for v in vs},
                     variance=root / f"var_{m}.h5", labels={"model": m, "dataset": "scenes"})


def compare(root: Path, a: str, b: str) -> None:
    import numpy as np
    import pandas as pd

    worst, rows = 0.0, 0
    for fa in sorted((root / a).rglob("*.csv")):
        ta, tb = pd.read_csv(fa), pd.read_csv(root / b / fa.relative_to(root / a))
        assert list(ta.metric) == list(tb.metric)
        for col in ("value", "ci_low", "ci_high"):
            worst = max(worst, float(np.abs(ta[col] - tb[col]).max()))
        rows += len(ta)
    print(f"{rows} score rows: max |difference| of value, ci_low, ci_high = {worst:.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("label", nargs="?")
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        compare(args.out, *args.compare)
    else:
        score(args.out, args.label)


if __name__ == "__main__":
    main()
