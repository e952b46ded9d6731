"""DAVIS label propagation: oracle features reach the reconstruction bound, random ones fail."""
import logging

import numpy as np
import pytest

from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore
from patchlens.evaluation import propagation
from patchlens.tasks import tracking
from patchlens.evaluation.davis_metrics import jf_labels, region_similarity
from patchlens.evaluation.knn import l2_normalize
from patchlens.evaluation.affinity import VariantAffinity
from patchlens.features.variants import variant_spec
from helpers.video_fixtures import moving_boxes, oracle_video_tokens, write_tokens, write_video_dataset

# Bilinear upsampling of one-hot label maps rounds every convex corner off (about 0.097 p^2
# pixels lost and a 0.29 p boundary offset per corner, p = patch size), so even grid-aligned
# objects need to be large against the patch, and p small against the F tolerance
# (ceil(0.008 * 160) = 2 px here), for the oracle to reach J&F >= 0.99.
H, W, PATCH = 96, 128, 4
GRID = (H // PATCH, W // PATCH)
T = 6
ALIGNED = [(8, 8, 32, 40, 0, 4), (56, 88, 32, 32, 0, -4)]           # edges on the patch grid
UNALIGNED = [(5, 11, 29, 37, 1.5, 5), (57, 90, 27, 25, -1, -6)]     # edges between patches


def identity(layer, x):
    return x


def build(tmp_path, videos, tokens_fn):
    root = write_video_dataset(tmp_path / "ds", videos)
    ds = Dataset(root)
    images, toks = [], []
    for name, masks in videos.items():
        images += [f"{name}_{t:03d}" for t in range(len(masks))]
        toks.append(tokens_fn(masks))
    toks = np.concatenate(toks)
    return ds, FeatureStore(write_tokens(tmp_path / "f.h5", toks, images, PATCH))


def oracle(masks):
    return oracle_video_tokens(masks, GRID, n_ids=2)


def value(df, metric, sequence="all", layer=None):
    sel = (df.metric == metric) & (df.sequence == sequence)
    if layer is not None:
        sel &= df.layer == layer
    assert sel.sum() == 1
    return float(df.loc[sel, "value"].iloc[0])


def reconstruction_bound(masks, source=None, skip_last=True):
    """J&F reached by propagating the ground truth itself: every scored frame's mask (of
    ``source``, default ``masks``) taken to the patch grid (as the seed is) and back to pixels
    (as the predictions are), scored against ``masks``."""
    source = masks if source is None else source
    ids = np.setdiff1d(np.unique(masks[0]), [0, 255])
    lut = np.zeros(256, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    js, fs = [], []
    last = len(masks) - 1 if skip_last else len(masks)
    for m, src in zip(masks[1:last], source[1:last]):
        pred = propagation.labels_to_mask(propagation.seed_labels(src, ids, GRID), m.shape)
        j, f = jf_labels(lut[m], pred, len(ids), m == 255)
        js.append(j)
        fs.append(f)
    return (np.mean(js) + np.mean(fs)) / 2


def dense_reference(target, ctx_feats, ctx_labels, grid, radius, topk, temperature):
    """DINO's label_propagation written densely: full affinity, window mask, top-k over all
    context sources, normalised exp(sim / T) weights."""
    h, w = grid
    n, P, _ = ctx_feats.shape
    y, x = np.divmod(np.arange(P), w)
    win = (np.abs(y[:, None] - y) <= radius) & (np.abs(x[:, None] - x) <= radius)
    aff = np.exp(np.einsum("qc,npc->nqp", target, ctx_feats) / temperature) * win  # (n, q, p)
    aff = aff.transpose(0, 2, 1).reshape(n * P, P)                                 # sources x q
    kth = -np.sort(-aff, axis=0)[topk - 1]
    aff = np.where(aff >= kth, aff, 0)
    aff /= aff.sum(0, keepdims=True)
    return (ctx_labels.reshape(n * P, -1).T @ aff).T


def test_window_mask_counts():
    m = propagation.window_mask(7, 9, 2)
    counts = m.sum(1).reshape(7, 9)
    assert counts[3, 4] == 25 and counts[0, 0] == 9 and np.array_equal(m, m.T)


@pytest.mark.parametrize("radius", [1, 3, 0])
def test_banded_propagation_equals_dense_reference(monkeypatch, radius):
    rng = np.random.default_rng(radius)
    h, w, n, C, K = 9, 11, 4, 16, 3
    l2 = l2_normalize
    tgt = l2(rng.standard_normal((h * w, C)))
    feats = l2(rng.standard_normal((n, h * w, C)))
    labels = rng.dirichlet(np.ones(K), size=(n, h * w)).astype(np.float32)
    monkeypatch.setattr(propagation, "BAND_BUDGET", 3 * w * n * w)   # force several bands
    out = propagation.propagate(tgt, feats, labels, (h, w), radius, 5, 0.1)
    ref = dense_reference(tgt, feats, labels, (h, w), radius if radius > 0 else h + w, 5, 0.1)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert propagation.band_rows(h, w, n, radius, propagation.BAND_BUDGET) < h


def test_aligned_oracle_is_near_perfect(tmp_path):
    videos = {"a": moving_boxes(T, H, W, ALIGNED)}
    ds, store = build(tmp_path, videos, oracle)
    df = tracking.run(store, ds, identity, dict(tracking.DEFAULT_PARAMS))
    assert value(df, "jf") >= 0.99
    assert value(df, "jf") == pytest.approx(reconstruction_bound(videos["a"]), abs=1e-6)


def test_unaligned_oracle_reaches_reconstruction_bound_random_does_not(tmp_path):
    clean = moving_boxes(T, H, W, UNALIGNED)
    masks = clean.copy()
    masks[3, 26:44, 10:50] = 255           # void over object 1's lower part in one frame ...
    ds, store = build(tmp_path, {"u": masks}, lambda m: oracle(clean))   # ... the oracle sees it
    params = dict(tracking.DEFAULT_PARAMS)
    df = tracking.run(store, ds, identity, params)
    bound = reconstruction_bound(masks, clean)
    assert bound > reconstruction_bound(np.where(masks == 255, 0, masks), clean) + 0.01
    assert 0.5 < bound < 0.99                                 # the case is really unaligned
    assert value(df, "jf") == pytest.approx(bound, abs=0.01)
    assert value(df, "jf", "u") == value(df, "jf")

    rng = np.random.default_rng(0)
    noise = lambda layer, x: rng.standard_normal(x.shape).astype(np.float32)  # noqa: E731
    rand = tracking.run(store, ds, noise, params)
    assert value(rand, "jf") < 0.5 * bound


def test_transform_is_applied_per_layer(tmp_path):
    masks = moving_boxes(T, H, W, ALIGNED)
    ds, store = build(tmp_path, {"a": masks}, lambda m: np.stack([oracle(m)] * 2, 1))
    rng = np.random.default_rng(1)

    def transform(layer, x):
        return x if layer == 0 else rng.standard_normal(x.shape).astype(np.float32)

    df = tracking.run(store, ds, transform, dict(tracking.DEFAULT_PARAMS))
    assert sorted(df.layer.unique()) == [0, 1]
    assert value(df, "jf", layer=0) >= 0.99 and value(df, "jf", layer=1) < 0.5
    df1 = tracking.run(store, ds, transform, dict(tracking.DEFAULT_PARAMS), layers=[1])
    assert df1.layer.unique().tolist() == [1]


def test_empty_first_frame_is_skipped_and_counted(tmp_path, caplog):
    empty = moving_boxes(T, H, W, ALIGNED)
    empty[0] = 0
    videos = {"a": moving_boxes(T, H, W, ALIGNED), "b_empty": empty}
    ds, store = build(tmp_path, videos, oracle)
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = tracking.run(store, ds, identity, dict(tracking.DEFAULT_PARAMS))
    assert "b_empty" in caplog.text and "no object" in caplog.text
    assert set(df.sequence) == {"a", "all"}
    allrows = df[df.sequence == "all"]
    assert (allrows.n_skipped == 1).all() and (allrows.n_eval == 1).all()
    assert not df.value.isna().any()
    assert set(df.columns) >= {"layer", "seed", "metric", "value", "n_eval", "n_skipped",
                               "sequence"}
    assert set(df.metric) == {"j", "f", "jf"}
    assert (df[df.sequence == "a"].n_eval == T - 2).all()     # frames 1..T-2 scored


def test_no_scorable_sequence_is_a_data_error(tmp_path):
    empty = moving_boxes(T, H, W, ALIGNED)
    empty[0] = 0
    ds, store = build(tmp_path, {"e": empty}, oracle)
    with pytest.raises(DataError, match="no video sequence"):
        tracking.run(store, ds, identity, dict(tracking.DEFAULT_PARAMS))
    with pytest.raises(DataError, match="split 'nope'"):
        tracking.run(store, ds, identity, {**tracking.DEFAULT_PARAMS, "split": "nope"})


def test_overall_average_pools_objects_or_sequences(tmp_path):
    two = moving_boxes(T, H, W, UNALIGNED)
    one = moving_boxes(T, H, W, [(20, 30, 23, 31, 2, -3)])
    ds, store = build(tmp_path, {"one": one, "two": two}, oracle)
    p = dict(tracking.DEFAULT_PARAMS, skip_last_frame=False, n_last_frames=2)
    objs = tracking.run(store, ds, identity, p)
    seqs = tracking.run(store, ds, identity, {**p, "average": "sequences"})
    j1, j2 = value(objs, "j", "one"), value(objs, "j", "two")
    assert j1 != pytest.approx(j2)
    assert value(objs, "j") == pytest.approx((j1 + 2 * j2) / 3)   # official: objects pooled
    assert value(seqs, "j") == pytest.approx((j1 + j2) / 2)
    assert (objs[objs.sequence == "one"].n_eval == T - 1).all()


@pytest.mark.parametrize("key,bad", [("topk", 0), ("temperature", 0), ("n_last_frames", -1),
                                     ("size_mask_neighborhood", 1.5), ("average", "frames"),
                                     ("norm_mask", "yes")])
def test_bad_params_raise_config_error(key, bad):
    with pytest.raises(ConfigError, match=rf"tasks\.tracking\.params\.{key}"):
        tracking.check_params({key: bad})


@pytest.mark.parametrize("m,block", [(600, 20), (600, 7), (30, 10)])
def test_topk_indices_matches_full_partition(m, block):
    rng = np.random.default_rng(m + block)
    x = rng.standard_normal((50, m)).astype(np.float32)
    x[:, ::3] = -np.inf                                      # masked entries, as outside a window
    idx = propagation.topk_indices(x, 5, block)
    assert idx.shape == (50, 5)
    got = np.sort(np.take_along_axis(x, idx, 1), 1)
    np.testing.assert_array_equal(got, np.sort(x, 1)[:, -5:])
    assert all(len(set(r)) == 5 for r in idx.tolist())       # no column chosen twice


def test_track_uses_first_frame_plus_last_n_frames():
    """track() against an explicit loop over DINO's context (first frame + n_last_frames
    previous frames with their propagated soft labels)."""
    rng = np.random.default_rng(11)
    h, w, C, n_last = 6, 7, 8, 2
    frames = rng.standard_normal((7, h, w, C)).astype(np.float32)
    seed = rng.dirichlet(np.ones(3), size=(h, w)).astype(np.float32)
    got = list(propagation.track(frames, seed, n_last, radius=2, topk=4, temperature=0.2))
    f = l2_normalize(frames).reshape(7, h * w, C)
    labels = [seed.reshape(h * w, 3)]
    for t in range(1, 7):
        ctx = [0] + list(range(max(1, t - n_last), t))
        lab = dense_reference(f[t], f[ctx], np.stack([labels[c] for c in ctx]), (h, w), 2, 4, 0.2)
        labels.append(lab)
        np.testing.assert_allclose(got[t - 1].reshape(h * w, 3), lab, atol=1e-5)


def test_labels_to_mask_norm_mask_rescales_weak_channels():
    probs = np.zeros((4, 4, 2), np.float32)
    probs[..., 0] = 0.7
    probs[1:3, 1:3, 0] = 0.5
    probs[1:3, 1:3, 1] = 0.3                  # weak object: loses the raw argmax everywhere
    raw = propagation.labels_to_mask(probs, (4, 4), norm_mask=False)
    normed = propagation.labels_to_mask(probs, (4, 4), norm_mask=True)
    assert raw.sum() == 0
    assert np.array_equal(normed, (np.arange(4)[:, None] % 3 > 0) & (np.arange(4) % 3 > 0))


def test_ids_absent_from_first_frame_are_scored_as_the_toolkit(tmp_path):
    """Objects are 1..max(first-frame id) (davis2017 get_all_masks): id 1, absent from frame 0 and
    entering at frame 3, is never predicted and scores J = F = 1 where it is absent, 0 where not."""
    masks = moving_boxes(T, H, W, ALIGNED)
    masks[masks == 1] = 0                       # object 1 only from frame 3 on
    masks[3:, 8:40, 8:48] = 1
    ds, store = build(tmp_path, {"a": masks}, oracle)
    df = tracking.run(store, ds, identity, dict(tracking.DEFAULT_PARAMS))
    scored = range(1, T - 1)                    # frames 1..T-2
    obj1_j = np.mean([float(not (masks[t] == 1).any()) for t in scored])
    # object 2 is grid-aligned and far from object 1: it reaches its reconstruction J
    j2 = np.mean([region_similarity(m == 2, propagation.labels_to_mask(
        propagation.seed_labels(m, [2], GRID), m.shape) == 1) for m in masks[1:T - 1]])
    assert obj1_j == pytest.approx(0.5)         # frames 1, 2 absent; 3, 4 present
    assert value(df, "j", "a") == pytest.approx((obj1_j + j2) / 2, abs=0.02)
    assert value(df, "j") == pytest.approx((obj1_j + j2) / 2, abs=0.02)   # 2 objects pooled


# -- the torch path (tracking on the device), run on the CPU --------------------------------------

torch = pytest.importorskip("torch")
from patchlens.evaluation import propagation_torch as pt  # noqa: E402


@pytest.mark.parametrize("radius", [1, 3, 0])
def test_torch_propagation_equals_numpy(radius):
    rng = np.random.default_rng(radius)
    h, w, n, C, K = 9, 11, 4, 16, 3
    tgt = l2_normalize(rng.standard_normal((h * w, C)))
    feats = l2_normalize(rng.standard_normal((n, h * w, C)))
    labels = rng.dirichlet(np.ones(K), size=(n, h * w)).astype(np.float32)
    ref = propagation.propagate(tgt, feats, labels, (h, w), radius, 5, 0.1)
    for budget in (3 * w * n * w, 1 << 30):            # several bands, and one
        out = pt.propagate(*map(torch.from_numpy, (tgt, feats, labels)), (h, w), radius, 5, 0.1,
                           band_budget=budget)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    assert pt.band_rows(h, w, n, radius, 3 * w * n * w) < h


def test_torch_track_and_masks_equal_numpy():
    rng = np.random.default_rng(5)
    masks = moving_boxes(T, H, W, UNALIGNED)
    clean = oracle(masks)
    frames = list(clean + 0.3 * rng.standard_normal(clean.shape).astype(np.float32))
    seed = propagation.seed_labels(masks[0], [1, 2], GRID)
    args = (3, 4, 5, 0.1)                              # n_last_frames, radius, topk, temperature
    ref = list(propagation.track(frames, seed, *args))
    raw = {"raw": variant_spec("raw")}
    aff = VariantAffinity(raw, frames[0].shape[-1], "cpu", torch_backend=True)
    got = [d["raw"] for d in propagation.track_variants(frames, seed, aff, *args)]
    assert len(got) == T - 1
    for r, g, m in zip(ref, got, masks[1:]):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-5)
        for norm in (True, False):
            a = propagation.labels_to_mask(r, m.shape, norm)
            b = pt.labels_to_mask(torch.from_numpy(r), m.shape, norm).numpy()
            assert np.mean(a != b) < 1e-3                # float32 ties only


def test_torch_norm_mask_conventions_equal_numpy():
    probs = np.zeros((4, 4, 3), np.float32)
    probs[..., 1] = 0.2                                # constant positive channel -> 1
    probs[1:3, 1:3, 2] = 0.05                          # weak channel rescaled to [0, 1]
    for norm in (True, False):
        assert np.array_equal(propagation.labels_to_mask(probs, (8, 8), norm),
                              pt.labels_to_mask(torch.from_numpy(probs), (8, 8), norm).numpy())


def test_run_on_torch_engine_equals_numpy(tmp_path):
    clean = moving_boxes(T, H, W, UNALIGNED)
    masks = clean.copy()
    masks[3, 26:44, 10:50] = 255
    rng = np.random.default_rng(1)
    def noisy(m):
        clean = oracle(m)
        return clean + 0.2 * rng.standard_normal(clean.shape).astype(np.float32)

    ds, store = build(tmp_path, {"u": masks, "v": moving_boxes(T, H, W, ALIGNED)}, noisy)
    params = dict(tracking.DEFAULT_PARAMS)
    ref = tracking.run(store, ds, identity, params)
    u_ref, u_got = [], []
    got = tracking.run(store, ds, identity, params, device="cpu", engine="torch", units=u_got)
    tracking.run(store, ds, identity, params, units=u_ref)
    np.testing.assert_allclose(got["value"], ref["value"], atol=1e-6)   # 0.0 here
    assert got.drop(columns="value").equals(ref.drop(columns="value"))
    assert len(u_got) == len(u_ref)
    with pytest.raises(ValueError, match="engine"):
        tracking.run(store, ds, identity, params, device="cuda", engine="numpy")


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_shared_products_equal_each_variant_tracked_alone(tmp_path, engine):
    """run_variants (one product per band for raw and every drop{m}, one for zscore) equals
    tracking each variant on its own transformed features (the per-variant contract), with two
    loud channels that carry most of the norm (as MAE's): the drop variants lose them. Patches
    of one object share one feature vector, so the neighbours have no near-ties (only exact
    ones, broken alike)."""
    from patchlens.features.variants import variant_spec

    def loud(m):  # the oracle's channels and two loud ones: the frame's quadrant, not objects
        x = oracle(m)
        yy, xx = np.indices(x.shape[1:3])
        quad = np.stack([yy < x.shape[1] // 2, xx < x.shape[2] // 2], -1).astype(np.float32)
        return np.concatenate([x, np.broadcast_to(20.0 + 40.0 * quad, x.shape[:3] + (2,))], -1)

    ds, store = build(tmp_path, {"u": moving_boxes(T, H, W, UNALIGNED),
                                 "v": moving_boxes(T, H, W, ALIGNED)}, loud)
    tok = store.tokens(0).reshape(-1, store.tokens(0).shape[-1]).astype(np.float64)
    specs = {v: variant_spec(v, tok.mean(0), tok.var(0))
             for v in ["raw", "zscore", "drop1", "drop2"]}
    params = dict(tracking.DEFAULT_PARAMS)
    units = {v: [] for v in specs}
    got = tracking.run_variants(store, ds, specs, params, units=units, engine=engine)
    for v, spec in specs.items():
        alone_units = []
        alone = tracking.run(store, ds, lambda layer, x, s=spec: s.apply(x), params,
                             units=alone_units, engine=engine)
        np.testing.assert_allclose(got[v]["value"], alone["value"], atol=1e-6)
        assert got[v].drop(columns="value").equals(alone.drop(columns="value"))
        assert len(units[v]) == len(alone_units)
    # the variants differ: the loud channels steer raw's neighbours, not drop2's
    assert not np.allclose(got["raw"]["value"], got["drop2"]["value"])
