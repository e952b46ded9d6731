"""Few-shot segmentation: oracle features reach mIoU 1, random features fall to chance."""
import logging

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore
from patchlens.tasks import fewshot_seg
from patchlens.evaluation.probes import LinearProbe
from patchlens.evaluation.support import sample_support
from patchlens.tasks.fewshot_seg import patch_labels
from patchlens.evaluation.metrics import mean_iou
from patchlens.evaluation.upsample import area_matrix, grid_fraction
from helpers.synthetic import band_map, identity, one_hot, upscale, write_dataset, write_store

GRID = (8, 8)
N_CLASSES = 4  # 0 = background, 1..3 objects


def build(tmp_path, n_train=12, n_val=10, rare=None, seed=0):
    """Band images of background + two object classes; a few val images carry a void band.
    Layer 0 = oracle (one-hot class), layer 1 = random. ``rare``: class kept in 2 train images."""
    rng = np.random.default_rng(seed)
    specs, grids = [], []
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        pool = [1, 2, 3] if rare is None or (split == "train" and i < 2) else [1, 2]
        if rare is not None and split == "train" and i < 2:
            objs = [rare, [c for c in pool if c != rare][i]]
        else:
            objs = list(rng.choice(pool, 2, replace=False))
        g = band_map(rng, GRID, [0] + objs)
        if split == "val" and i % 3 == 0:
            g = np.where(g == objs[1], 255, g).astype(np.uint8)  # a void band
        grids.append(g)
        specs.append({"image": f"im{i:03d}", "split": split, "semantic": upscale(g)})
    root = write_dataset(tmp_path / "data", specs, ["background", "a", "b", "c"])
    g = np.stack(grids)
    oracle = one_hot(np.where(g == 255, 0, g), 8)
    oracle[g == 255] = rng.normal(size=(int((g == 255).sum()), 8))
    tokens = np.stack([oracle, rng.normal(size=oracle.shape).astype(np.float32)], 1)
    store = write_store(tmp_path / "f.h5", [s["image"] for s in specs], tokens)
    return Dataset(root), FeatureStore(store)


def params(**kw):
    return {**fewshot_seg.DEFAULT_PARAMS, "n_shots": 3, "seeds": [0, 1], **kw}


def independence_miou(conf):
    """mIoU expected when predictions are independent of the ground truth with these marginals."""
    conf = conf.astype(float)
    expect = np.outer(conf.sum(1), conf.sum(0)) / conf.sum()
    return mean_iou(expect)


def test_oracle_reaches_max_and_random_falls_to_chance(tmp_path):
    ds, store = build(tmp_path)
    df = fewshot_seg.run(store, ds, identity, params())
    assert set(df.columns) >= {"layer", "seed", "metric", "value", "n_eval", "n_skipped"}
    assert df["value"].notna().all()
    assert len(df) == 2 * 2 * 2 and set(df.metric) == {"miou_knn", "miou_linear"}
    assert (df[df.layer == 0].value >= 0.99).all()
    assert (df.n_eval == 10).all() and (df.n_skipped == 0).all()
    conf, _ = fewshot_seg.confusions(store, ds, identity, params(), layers=[1])
    for (layer, seed, head), m in conf.items():
        chance = independence_miou(m)
        # random features: predictions independent of the ground truth; 640 query patches
        # decide, so the realised mIoU stays within 0.06 of the independence value
        assert abs(mean_iou(m) - chance) < 0.06, (head, mean_iou(m), chance)
        assert mean_iou(m) < 0.5


def test_transform_is_applied_to_support_and_query(tmp_path):
    ds, store = build(tmp_path)
    orig_tokens = store.tokens

    def noisy(layer, images=None):  # huge-variance nuisance channels, as in MAE
        x = orig_tokens(layer, images)
        x[..., -3:] = np.random.default_rng(len(x)).normal(0, 100, x[..., -3:].shape)
        return x

    store.tokens = noisy
    p = params(heads=["knn"], seeds=[0])
    raw = fewshot_seg.run(store, ds, identity, p, layers=[0])
    dropped = fewshot_seg.run(store, ds, lambda layer, x: x[..., :-3], p, layers=[0])
    assert raw.value.iloc[0] < 0.6 and dropped.value.iloc[0] >= 0.99


def test_rare_class_warns_and_is_counted(tmp_path, caplog):
    ds, store = build(tmp_path, rare=3)
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = fewshot_seg.run(store, ds, identity, params(n_shots=5, seeds=[0], heads=["knn"]),
                             layers=[0])
    assert "class 3 (c) is in 2 support image(s)" in caplog.text
    assert (df.n_classes_short == 1).all() and df.value.notna().all()


def test_class_absent_from_support_is_excluded_and_counted(tmp_path, caplog):
    ds, store = build(tmp_path)
    keep = [im for im in ds.split("train")
            if 3 not in np.unique(ds.load_semantic(im))]
    p = params(seeds=[0], heads=["knn", "linear"])
    ds.manifest.loc[[im for im in ds.split("train") if im not in keep], "split"] = "unused"
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = fewshot_seg.run(store, ds, identity, p, layers=[0])
    assert "class 3 (c) has no support patch" in caplog.text
    assert (df.n_classes_missing == 1).all()
    assert df.value.notna().all() and (df.value < 0.99).all()  # class 3 pixels are all wrong


def test_query_split_without_images_names_the_split(tmp_path):
    ds, store = build(tmp_path, n_train=4, n_val=2)
    with pytest.raises(DataError, match="'test'"):
        fewshot_seg.run(store, ds, identity, params(query_split="test"))


def test_bad_params(tmp_path):
    ds, store = build(tmp_path, n_train=4, n_val=2)
    with pytest.raises(ConfigError, match="heads"):
        fewshot_seg.run(store, ds, identity, params(heads=["svm"]))
    with pytest.raises(ConfigError, match="unknown"):
        fewshot_seg.run(store, ds, identity, params(n_shot=3))


def test_query_without_mask_is_skipped_and_counted(tmp_path, caplog):
    ds, store = build(tmp_path, n_train=6, n_val=3)
    ds.manifest.loc["im007", "semantic"] = ""
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = fewshot_seg.run(store, ds, identity, params(seeds=[0], heads=["knn"]), layers=[0])
    assert "'im007' has no semantic mask" in caplog.text
    assert (df.n_eval == 2).all() and (df.n_skipped == 1).all()


def test_area_matrix_rows_sum_to_one_and_fractions():
    a = area_matrix(4, 10)  # cells of 2.5 pixels
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(a[0], [0.4, 0.4, 0.2] + [0] * 7, atol=1e-6)
    m = np.zeros((10, 10), bool)
    m[:5, :5] = True  # top-left quarter: exactly the top-left 2x2 cells
    np.testing.assert_allclose(grid_fraction(m, (4, 4)), np.kron([[1, 0], [0, 0]], np.ones((2, 2))),
                               atol=1e-6)


def test_patch_labels_majority_and_void():
    lab = np.zeros((4, 8), int)   # two 4x4 cells
    lab[:, :3] = 2                # cell 0: 12 px class 2, 4 px class 0 -> 2
    lab[:3, 4:] = -1              # cell 1: 12 px void of 16 -> dropped at max_void 0.5
    np.testing.assert_array_equal(patch_labels(lab, (1, 2), 3, 0.5), [[2, -1]])
    np.testing.assert_array_equal(patch_labels(lab, (1, 2), 3, 0.8), [[2, 0]])


def test_sample_support_is_seeded_and_counts():
    presence = np.zeros((10, 3), bool)
    presence[:, 0] = True
    presence[:2, 1] = True   # class 1: 2 candidates
    a = sample_support(presence, 3, 7, np.array([0, 1, 2]))
    b = sample_support(presence, 3, 7, np.array([0, 1, 2]))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == [1] and a[2] == [2]
    assert {0, 1} <= set(a[0].tolist()) and len(a[0]) <= 5


def test_linear_probe_separates_and_matches_sklearn():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 3
    y = rng.integers(0, 3, 150)
    x = (centres[y] + rng.normal(size=(150, 5)) * 0.3).astype(np.float32)
    probe = LinearProbe.fit(x, y, 3, weight_decay=1e-2, iters=500)
    assert (probe.logits(x).argmax(1) == y).all()
    # same objective as scikit-learn's multinomial LogisticRegression with C = 1 / (wd * n)
    z = (x / np.linalg.norm(x, axis=1, keepdims=True) - probe.mean) / probe.scale
    ref = LogisticRegression(C=1 / (1e-2 * 150), tol=1e-10, max_iter=5000).fit(z, y)
    p_ours = np.exp(probe.logits(x))
    p_ours /= p_ours.sum(1, keepdims=True)
    np.testing.assert_allclose(p_ours, ref.predict_proba(z), atol=2e-3)
