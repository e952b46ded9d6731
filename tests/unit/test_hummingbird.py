"""Hummingbird dense retrieval: oracle features reach the maximum, random ones chance, a planted
nearest neighbour is found; the reference's rare-class sampling, soft labels, Hungarian matching
and the approximate index's recall."""
import numpy as np
import pytest

from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError
from patchlens.evaluation.ann import ApproxCosineIndex, recall_at_k
from patchlens.evaluation.knn import CosineIndex
from patchlens.evaluation.metrics import mean_iou
from patchlens.features.store import FeatureStore
from patchlens.models.oracle import oracle_tokens
from patchlens.tasks import hummingbird as hb
from helpers.synthetic import band_map, identity, upscale, write_dataset, write_store

GRID = (8, 8)
CLASSES = ["background", "a", "b", "c"]


def build(tmp_path, n_train=10, n_val=8, seed=0, twins=False):
    """Band images of background + two of three object classes. Layer 0 = oracle features,
    layer 1 = random; ``twins``: val image i repeats train image i (mask and random features)."""
    rng = np.random.default_rng(seed)
    specs, grids = [], []
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        if twins and split == "val":
            g = grids[i - n_train]
        else:
            g = band_map(rng, GRID, [0] + list(rng.choice([1, 2, 3], 2, replace=False)))
        grids.append(g)
        specs.append({"image": f"im{i:03d}", "split": split, "semantic": upscale(g)})
    root = write_dataset(tmp_path / "data", specs, CLASSES)
    ds = Dataset(root)
    names = [s["image"] for s in specs]
    orc = oracle_tokens(ds, names, GRID).reshape(len(names), *GRID, -1)
    rand = rng.normal(size=(len(names), *GRID, orc.shape[-1])).astype(np.float32)
    if twins:
        rand[n_train:] = rand[:n_val]
    tokens = np.stack([orc, rand], 1)
    return ds, FeatureStore(write_store(tmp_path / "f.h5", names, tokens))


def params(**kw):
    return {**hb.DEFAULT_PARAMS, "memory_size": 10_000, **kw}


def value(df, layer, metric="miou"):
    return float(df[(df.layer == layer) & (df.metric == metric)].value.iloc[0])


def test_oracle_is_perfect_random_is_chance(tmp_path):
    ds, store = build(tmp_path)
    units = []
    df = hb.run(store, ds, identity, params(seeds=[0, 1]), units=units)
    assert set(df.metric) == {"miou"} and len(df) == 4
    assert (df[df.layer == 0].value >= 0.99).all()
    assert (df.n_memory == 10 * 64).all() and (df.n_eval == 8).all()
    # random features: predictions independent of the truth; mIoU near the independence value
    gt = np.concatenate([hb.load_labels(ds, im, hb.class_lut(ds)[0]).ravel()
                         for im in ds.split("val")])
    pred_marg = np.bincount(gt, minlength=4)  # same marginals on both sides at best
    expect = np.outer(np.bincount(gt, minlength=4), pred_marg) / gt.size
    assert value(df, 1) < 0.5 and value(df, 1) < mean_iou(expect) + 0.1
    assert len(units) == 4 and set(units[0].columns) >= {"tp", "fp", "fn"}


def independence_miou(units):
    """mIoU expected when predictions are independent of the truth, with the realised marginals
    (from the per-image tp / fp / fn records)."""
    tot = units[0].groupby("cls")[["tp", "fp", "fn"]].sum()
    g, p = (tot.tp + tot.fn).to_numpy(float), (tot.tp + tot.fp).to_numpy(float)
    n = g.sum()
    tp = g * p / n
    union = g + p - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_shuffled_memory_labels_give_chance(tmp_path, monkeypatch):
    """Memory labels permuted over the whole bank: the prediction is independent of the truth,
    and the mIoU falls to the independence value of its marginals."""
    ds, store = build(tmp_path)
    orig = hb._memory

    def shuffled(*args):
        images, picks, labels, per = orig(*args)
        return images, picks, labels[np.random.default_rng(0).permutation(len(labels))], per

    monkeypatch.setattr(hb, "_memory", shuffled)
    rng = np.random.default_rng(1)
    jitter = lambda layer, x: x + rng.normal(0, 0.3, x.shape).astype(np.float32)  # noqa: E731
    units = []  # (jitter: same-class patches no longer tie, so each retrieves other patches)
    df = hb.run(store, ds, jitter, params(k=5, temperature=1.0), layers=[0], units=units)
    assert value(df, 0) < 0.4
    assert abs(value(df, 0) - independence_miou(units)) < 0.06


def test_planted_nearest_neighbour_is_found(tmp_path):
    """Random features, but every val image is a copy of a train image: with k = 1 each query
    patch retrieves its twin (similarity 1) and takes its label: mIoU 1."""
    ds, store = build(tmp_path, twins=True)
    df = hb.run(store, ds, identity, params(k=1), layers=[1])
    assert value(df, 1) == 1.0
    bank = np.random.default_rng(1).normal(size=(5000, 32)).astype(np.float32)
    q = bank[[17, 4242]] + 1e-3
    for index in (CosineIndex(bank, backend="faiss"), ApproxCosineIndex(bank, "hnsw"),
                  ApproxCosineIndex(bank, "ivf", nprobe=1000)):
        assert index.search(q, 1)[1][:, 0].tolist() == [17, 4242]


def test_approximate_index_records_its_recall(tmp_path):
    ds, store = build(tmp_path)
    exact = hb.run(store, ds, identity, params(), layers=[1])
    full = hb.run(store, ds, identity, params(index="ivf", nlist=4, nprobe=4), layers=[1])
    assert value(full, 1, "recall_at_k") == 1.0            # every cell visited: exhaustive
    assert value(full, 1) == pytest.approx(value(exact, 1), abs=1e-9)
    part = hb.run(store, ds, identity, params(index="ivf", nlist=16, nprobe=1), layers=[1])
    assert 0 < value(part, 1, "recall_at_k") < 1


def test_recall_at_k_counts_overlap():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 9, 1], [7, 8, 0]])
    np.testing.assert_allclose(recall_at_k(approx, exact), [2 / 3, 0])


def test_rare_classes_are_preferred():
    """One patch of a rare class among 63 background patches: with one draw the rare patch wins
    far more often than the uniform 1/64 (score U vs 63 U' each)."""
    lab = np.zeros((64, 3), np.float32)
    lab[:, 0] = 1
    lab[5] = [0, 1, 0]
    hits = [hb.sample_patches(lab, 1, np.random.default_rng(s))[0] == 5 for s in range(400)]
    assert np.mean(hits) > 0.5
    both = lab.copy()
    both[9] = [0.5, 0, 0.5]                     # a patch with two classes counts both
    picks = hb.sample_patches(both, 64, np.random.default_rng(0))
    assert picks.tolist() == list(range(64))    # n >= P: every patch


def test_soft_labels_share_void_as_class_or_renormalised():
    labels = np.full((16, 16), -1, np.int64)    # 2 x 2 grid of 8 x 8 patches
    labels[:8, :4] = 1                          # top-left: half class 1, half void
    labels[:8, 8:] = 0                          # top-right: all class 0
    s = hb.soft_labels(labels, (2, 2), 2, "class")
    np.testing.assert_allclose(s[0, 0], [0, 0.5, 0.5])
    np.testing.assert_allclose(s[0, 1], [1, 0, 0])
    np.testing.assert_allclose(s[1, 0], [0, 0, 1])
    i = hb.soft_labels(labels, (2, 2), 2, "ignore")
    np.testing.assert_allclose(i[0, 0], [0, 1, 0])
    np.testing.assert_allclose(i[1, 0], [0, 0, 0])
    assert hb.sample_patches(i.reshape(4, 3), 4, np.random.default_rng(0)).tolist() == [0, 1]


def test_predicted_void_is_a_miss_and_hungarian_undoes_a_permutation():
    conf = np.array([[5, 0, 1], [0, 3, 0], [0, 0, 0]])      # K = 2 + predicted-void column
    tp, fp, fn = hb.iou_counts(conf, 2)
    assert tp.tolist() == [5, 3] and fp.tolist() == [0, 0] and fn.tolist() == [1, 0]
    assert hb.miou(conf, 2) == pytest.approx((5 / 6 + 1) / 2)
    perm = np.array([[0, 4, 0, 0], [0, 0, 6, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
    order = hb.hungarian_order(perm, 3)
    assert hb.miou(perm[:, order], 3) == 1.0 and hb.miou(perm, 3) == 0.0


def test_hungarian_metric_is_reported(tmp_path):
    ds, store = build(tmp_path)
    df = hb.run(store, ds, identity, params(hungarian=True), layers=[0])
    assert value(df, 0, "miou_hungarian") >= value(df, 0) >= 0.99


def test_memory_size_fraction_and_subset_file(tmp_path):
    ds, store = build(tmp_path)
    df = hb.run(store, ds, identity, params(memory_size=100), layers=[0])
    assert df.n_patches_per_image.iloc[0] == 10 and df.n_memory.iloc[0] == 100
    df = hb.run(store, ds, identity, params(fraction=0.5), layers=[0])
    assert df.n_memory_images.iloc[0] == 5
    listing = tmp_path / "subset.txt"
    listing.write_text("im001.jpg\nim003\n")
    df = hb.run(store, ds, identity, params(subset_file=str(listing)), layers=[0])
    assert df.n_memory_images.iloc[0] == 2


@pytest.mark.parametrize("key, bad", [("k", 0), ("temperature", 0), ("memory_size", -1),
                                      ("fraction", 0), ("fraction", 1.5), ("void", "bg"),
                                      ("index", "lsh"), ("hungarian", "yes"), ("seeds", []),
                                      ("nprobe", 0), ("subset_file", 3)])
def test_bad_params_raise_config_error(key, bad):
    with pytest.raises(ConfigError, match=f"tasks.hummingbird.params.{key}"):
        hb.check_params({key: bad})


def test_plan_costs_the_task():
    from patchlens.plan import task_flop

    p = hb.check_params({})
    counts = {"train": 1000, "val": 200}
    got = task_flop("hummingbird", p, counts, {"source": "voc2012"}, (28, 28), 384)
    per = min(784, 102_400 // 1000)
    assert got == pytest.approx(2.0 * 200 * 784 * 1000 * per * 384)


def test_pruned_upsampling_equals_the_full_argmax():
    from patchlens.evaluation.upsample import resize_bilinear

    rng = np.random.default_rng(3)
    scores = rng.dirichlet(np.ones(4), size=(6, 7)).astype(np.float32)
    full = np.zeros((6, 7, 12), np.float32)
    full[..., [2, 5, 6, 11]] = scores                   # 8 labels score 0 everywhere
    ref = resize_bilinear(full, (30, 41)).argmax(-1)
    assert np.array_equal(hb._predict(full, (30, 41), None), ref)
    assert np.array_equal(hb._predict(full, (30, 41), "cpu"), ref)    # the torch path
    one = np.zeros((2, 2, 5), np.float32)
    one[..., 3] = 1
    assert (hb._predict(one, (4, 4), None) == 3).all()


def test_chunked_reading_gives_the_same_scores(tmp_path, monkeypatch):
    ds, store = build(tmp_path)
    whole = hb.run(store, ds, identity, params(memory_size=200), layers=[1])
    monkeypatch.setattr(hb, "_CHUNK", 3)                # memory and queries in chunks of 3
    assert hb.run(store, ds, identity, params(memory_size=200), layers=[1]).equals(whole)


def test_torch_engine_equals_numpy(tmp_path):
    """The device path (torch search and upsampling), run on the CPU: the same scores."""
    pytest.importorskip("torch")
    ds, store = build(tmp_path)
    ref = hb.run(store, ds, identity, params(hungarian=True))
    got = hb.run(store, ds, identity, params(hungarian=True), device="cpu", engine="torch")
    np.testing.assert_allclose(got.value, ref.value, atol=1e-6)
    with pytest.raises(ValueError, match="engine"):
        hb.run(store, ds, identity, params(), device="cuda", engine="numpy")


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_every_variant_from_shared_products_equals_each_alone(tmp_path, engine):
    """run_variants (one VariantIndex per layer and seed: raw and the drop{m} from one product,
    zscore from one more) gives each variant the scores and units of running it alone on its
    transformed features; two loud channels (most of the norm, as MAE's) make the variants
    differ. The loud channels are constant over an image, the others the oracle's: one vector
    per (image, class mix), so no near-ties."""
    from patchlens.features.variants import variant_spec

    ds, store0 = build(tmp_path)
    tok = store0.tokens(0)
    per_image = 30.0 + 50.0 * np.random.default_rng(5).random((tok.shape[0], 1, 1, 2))
    loud = np.concatenate([tok, np.broadcast_to(per_image, tok.shape[:-1] + (2,))],
                          -1).astype(np.float32)
    names = list(store0.images)
    store = FeatureStore(write_store(tmp_path / "loud.h5", names, loud[:, None]))
    flat = loud.reshape(-1, loud.shape[-1]).astype(np.float64)
    specs = {v: variant_spec(v, flat.mean(0), flat.var(0))
             for v in ["raw", "zscore", "drop1", "drop2"]}
    units = {v: [] for v in specs}
    got = hb.run_variants(store, ds, specs, params(seeds=[0, 1]), units=units, engine=engine)
    for v, spec in specs.items():
        alone_units = []
        alone = hb.run(store, ds, lambda layer, x, s=spec: s.apply(x), params(seeds=[0, 1]),
                       units=alone_units, engine=engine)
        np.testing.assert_allclose(got[v].value, alone.value, atol=1e-9)
        assert got[v].drop(columns="value").equals(alone.drop(columns="value"))
        for a, b in zip(units[v], alone_units, strict=True):
            assert a.equals(b)
    assert got["drop2"].value.min() >= 0.99 > got["raw"].value.max()  # loud noise misleads raw
