"""Low-shot classification: label-oracle features give acc = mlmap = 1, random ones chance."""
import logging

import numpy as np
import pytest

from patchlens.data.dataset import Dataset
from patchlens.errors import DataError
from patchlens.features.store import FeatureStore
from patchlens.tasks import lowshot_cls
from helpers.synthetic import identity, random_ranking_ap, write_dataset, write_store

GRID = (4, 4)
K = 4
MULTI = {0: [0], 1: [1, 3], 2: [2, 0], 3: [3]}  # primary label -> all labels


def build(tmp_path, n_train=10, n_val=50, multi=False, with_cls=True, seed=0, train_counts=None):
    """``n_train`` / ``n_val`` images per class; layer 0 = oracle (normalised multi-hot of the
    labels on every patch and the CLS token), layer 1 = random."""
    rng = np.random.default_rng(seed)
    specs, feats = [], []
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(K):
            for i in range(n if split == "val" or train_counts is None else train_counts[c]):
                labels = MULTI[c] if multi else [c]
                specs.append({"image": f"{split}{c}_{i:02d}", "split": split, "labels": labels,
                              "height": 32, "width": 32})
                feats.append(np.eye(K)[labels].sum(0) / np.sqrt(len(labels)))
    root = write_dataset(tmp_path / "data", specs, [f"c{c}" for c in range(K)])
    n = len(specs)
    oracle = np.broadcast_to(np.asarray(feats, np.float32)[:, None, None], (n, *GRID, K))
    tokens = np.stack([oracle, rng.normal(size=oracle.shape)], 1).astype(np.float32)
    cls = np.stack([oracle[:, 0, 0], rng.normal(size=(n, K))], 1).astype(np.float32) \
        if with_cls else None
    store = write_store(tmp_path / "f.h5", [s["image"] for s in specs], tokens, cls=cls)
    return Dataset(root), FeatureStore(store)


def test_oracle_accuracy_one_and_random_chance(tmp_path):
    ds, store = build(tmp_path)
    df = lowshot_cls.run(store, ds, identity, {})
    assert df.value.notna().all()
    assert set(df.metric) == {"acc"}  # single-label data: no mlmap
    assert len(df) == 2 * 2 * 3 * 2   # layers x shots x seeds x features
    assert (df[df.layer == 0].value == 1.0).all()
    n = df.n_eval.iloc[0]
    chance = 1 / K  # balanced queries, n-shot support balanced over the K classes
    sd = np.sqrt(chance * (1 - chance) / n)
    rand = df[df.layer == 1]
    assert (abs(rand.value - chance) < 4 * sd).all(), (rand.value.tolist(), chance, sd)


def test_multilabel_oracle_gives_mlmap_one_and_random_chance(tmp_path):
    ds, store = build(tmp_path, multi=True)
    df = lowshot_cls.run(store, ds, identity, {"features": ["patch"]})
    assert df.value.notna().all() and set(df.metric) == {"acc", "mlmap"}
    assert df[df.layer == 0].value.tolist() == pytest.approx([1.0] * (len(df) // 2))
    q = ds.split("val")
    pos = np.array([[c in ds.labels(im) for c in range(K)] for im in q]).sum(0)
    chance = np.mean([random_ranking_ap(len(q), r) for r in pos])
    rand = df[(df.layer == 1) & (df.metric == "mlmap")]
    # over 30 seeds of this builder the realised mlmap minus chance had sd 0.022: 4 sd
    assert (abs(rand.value - chance) < 0.09).all(), (rand.value.tolist(), chance)


def test_short_class_unlabelled_query_and_no_cls(tmp_path, caplog):
    ds, store = build(tmp_path, with_cls=False, n_val=5, train_counts=[5, 5, 2, 5])
    ds.manifest.loc["val0_00", "labels"] = ""
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = lowshot_cls.run(store, ds, identity, {"n_shots": [5], "seeds": [0]})
    assert "class 2 is the primary label of 2 support image(s)" in caplog.text
    assert "'val0_00' has no labels" in caplog.text
    assert set(df.feature) == {"patch"}
    assert (df.n_classes_short == 1).all() and (df.n_skipped == 1).all()
    assert (df.n_eval == 4 * 5 - 1).all() and df.value.notna().all()


def test_class_without_support_is_counted(tmp_path, caplog):
    ds, store = build(tmp_path, n_val=5, train_counts=[3, 3, 0, 3])
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = lowshot_cls.run(store, ds, identity, {"n_shots": [1], "seeds": [0]}, layers=[0])
    assert "class 2 has no support image" in caplog.text
    assert (df.n_classes_missing == 1).all()
    # the queries of class 2 (one class in K, balanced) are all wrong, the others right
    assert df.value.tolist() == pytest.approx([1 - 1 / K] * 2)


def test_empty_query_split_names_the_split(tmp_path):
    ds, store = build(tmp_path, n_train=2, n_val=1)
    with pytest.raises(DataError, match="'test'"):
        lowshot_cls.run(store, ds, identity, {"query_split": "test"})
