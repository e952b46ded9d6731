"""The ``depth`` task: NYU metrics against hand computations, the oracle near perfect, shuffled
depths at the level of a constant prediction, per-image units, the scenes depth map."""
from __future__ import annotations

import math

import numpy as np
import pytest

from patchlens.data.dataset import Dataset
from patchlens.data.scenes import generate_scenes
from patchlens.data.scenes import depth as sdepth
from patchlens.data.scenes.render import object_pixels
from patchlens.errors import ConfigError
from patchlens.evaluation import depth as D
from patchlens.features.store import FeatureStore
from patchlens.models import oracle
from patchlens.stats.units import finish
from patchlens.tasks import depth as task
from patchlens.tasks.registry import get_task

from helpers.synthetic import identity, write_store

TINY = dict(image_size=128, n_train=16, n_val=8, n_gallery=0, n_videos=1, n_frames=4,
            n_pairs=0, n_identities=12, n_shots_max=2, patch_align=16)
GRID = (8, 8)
CHEAP = {"n_bins": 32, "iters": 60}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth") / "scenes"
    generate_scenes(root, TINY)
    return Dataset(root)


@pytest.fixture(scope="module")
def stores(scenes, tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    ims = scenes.split("train", "val")
    tok = oracle.oracle_tokens(scenes, ims, GRID)
    n, _, P, C = tok.shape
    orc = write_store(d / "oracle.h5", ims, tok.reshape(n, 1, *GRID, C), patch_size=16)
    noise = np.random.default_rng(0).normal(size=(n, 1, *GRID, 16)).astype(np.float32)
    return {"oracle": orc, "noise": write_store(d / "noise.h5", ims, noise, patch_size=16)}


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_equal_hand_computation():
    gt = np.array([[1.0, 2.0], [4.0, np.nan]])
    pred = np.array([[1.0, 1.0], [5.0, 3.0]])
    m = D.depth_metrics(pred, gt, D.valid_mask(gt, 1e-3, 10), 1e-3, 10)
    # valid pixels: (d, g) = (1, 1), (1, 2), (5, 4); ratios 1, 2, 1.25
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert m["absrel"] == pytest.approx((0 + 0.5 + 0.25) / 3)
    assert m["log10"] == pytest.approx((math.log10(2) + math.log10(1.25)) / 3)
    assert m["delta1"] == pytest.approx(1 / 3)      # 1.25 is not < 1.25
    assert m["delta2"] == pytest.approx(2 / 3)      # 2 > 1.5625
    assert m["delta3"] == pytest.approx(2 / 3)      # 2 > 1.953125


def test_cap_clips_predictions_and_drops_far_ground_truth():
    gt = np.array([[5.0, 12.0]])
    pred = np.array([[50.0, 5.0]])
    mask = D.valid_mask(gt, 1e-3, 10)
    assert mask.tolist() == [[True, False]]
    m = D.depth_metrics(pred, gt, mask, 1e-3, 10)
    assert m["rmse"] == pytest.approx(5.0)          # 50 clipped to 10
    assert np.isnan(D.depth_metrics(pred, gt, np.zeros_like(mask), 1e-3, 10)["rmse"])


def test_eigen_crop_only_on_nyu_sized_images():
    gt = np.full((480, 640), 3.0)
    pred = gt.copy()
    pred[:45] = pred[471:] = 9.0
    pred[:, :41] = pred[:, 601:] = 9.0
    crop = D.eval_crop(gt.shape, "eigen")
    assert crop == (45, 471, 41, 601)
    assert D.depth_metrics(pred, gt, D.valid_mask(gt, 1e-3, 10, crop), 1e-3, 10)["rmse"] == 0
    whole = D.depth_metrics(pred, gt, D.valid_mask(gt, 1e-3, 10, None), 1e-3, 10)
    outside = 1 - (471 - 45) * (601 - 41) / (480 * 640)
    assert whole["rmse"] == pytest.approx(6 * math.sqrt(outside))
    assert D.eval_crop((224, 224), "eigen") is None and D.eval_crop((480, 640), None) is None


def test_patch_targets_are_geometric_means_of_valid_pixels():
    gt = np.array([[1.0, 4.0, 2.0, np.nan], [1.0, 4.0, np.nan, np.nan]])
    t = D.patch_targets(gt, (1, 2), 1e-3, 10, 0.5)
    assert t[0, 0] == pytest.approx(2.0)            # sqrt(1 * 4)
    assert np.isnan(t[0, 1])                        # one valid pixel of four < 0.5
    assert D.patch_targets(gt, (1, 2), 1e-3, 10, 0.25)[0, 1] == pytest.approx(2.0)


def test_the_depth_errors_are_declared_lower_is_better_in_the_registry():
    from patchlens.tasks.registry import lower_is_better

    assert set(D.LOWER_IS_BETTER) == set(get_task("depth").lower_is_better) <= lower_is_better()
    assert get_task("depth").headline in D.METRICS


def test_params_are_checked():
    assert task.check_params({})["head"] == "bins"
    for bad in ({"head": "svm"}, {"n_bins": 1}, {"max_depth": 0.0001}, {"eval_crop": "garg"},
                {"bin_spacing": "sqrt"}, {"max_train_patches": 0}, {"typo": 1}):
        with pytest.raises(ConfigError, match="tasks.depth.params"):
            task.check_params(bad)


# -- the task on scenes --------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["bins", "log_regression"])
def test_oracle_is_near_perfect_and_noise_is_not(scenes, stores, head):
    p = {"head": head, **CHEAP}
    with FeatureStore(stores["oracle"]) as st:
        units = []
        orc = task.run(st, scenes, identity, p, units=units).set_index("metric")["value"]
    assert orc["delta1"] > 0.95 and orc["absrel"] < 0.06 and orc["delta3"] > 0.99
    with FeatureStore(stores["noise"]) as st:
        noise = task.run(st, scenes, identity, p).set_index("metric")["value"]
    assert noise["delta1"] < orc["delta1"] - 0.3 and noise["rmse"] > 2 * orc["rmse"]
    # per-image units: their mean is the score, and they give intervals around it
    table = task.run(FeatureStore(stores["oracle"]), scenes, identity, p)
    out = finish(table, units)
    for _, r in out.iterrows():
        u = [x for x in units if x["metric"].iloc[0] == r["metric"]][0]
        assert u["num"].mean() == pytest.approx(r["value"])
        assert len(u) == len(scenes.split("val"))
        assert r["ci_low"] <= r["value"] + 1e-9 and r["value"] <= r["ci_high"] + 1e-9


def test_shuffled_depths_score_like_a_constant_prediction(scenes, stores):
    """Chance level: a probe trained on permuted patch depths predicts about the training mean,
    so it scores like the constant prediction computed here from the raw maps."""
    p = task.check_params(CHEAP)
    with FeatureStore(stores["oracle"]) as st:
        res = task.score(st, scenes, identity, CHEAP, shuffle_seed=1)
    shuffled = {m: float(v.mean()) for m, v in res["scores"][(0, 0)].items()}
    targets = np.concatenate([D.patch_targets(scenes.load_depth(im), GRID, p["min_depth"],
                                              p["max_depth"], p["min_valid"]).ravel()
                              for im in scenes.split("train")])
    const = float(np.nanmean(targets))
    ref = {m: [] for m in D.METRICS}
    for im in scenes.split("val"):
        g = scenes.load_depth(im)
        ok = np.isfinite(g)
        d, gg = np.full(ok.sum(), const), g[ok]
        ratio = np.maximum(d / gg, gg / d)
        ref["rmse"].append(np.sqrt(np.mean((d - gg) ** 2)))
        ref["absrel"].append(np.mean(np.abs(d - gg) / gg))
        ref["delta1"].append(np.mean(ratio < 1.25))
    for m, tol in (("rmse", 0.25), ("absrel", 0.05), ("delta1", 0.1)):
        assert shuffled[m] == pytest.approx(np.mean(ref[m]), abs=tol), m


def test_flop_counts_the_fit_and_the_queries():
    p = task.check_params({"max_train_patches": None})
    counts = {"train": 10, "val": 5}
    C, K = 384, 256
    f = task.flop(p, counts, {}, (4, 4), C)
    fit = 4.0 * 160 * C * K * 100
    assert f == {"flop": fit + 2.0 * 80 * C * K, "probe_flop": fit}
    r = task.check_params({"head": "log_regression", "seeds": [0, 1], "max_train_patches": 100})
    got = task.flop(r, counts, {}, (4, 4), C, variants=["raw", "zscore"])
    assert got == {"flop": 2 * 2 * (2.0 * 100 * C * C + 2.0 * 80 * C)}


# -- the scenes depth map ------------------------------------------------------------------------
def test_scenes_depth_ground_plane_objects_and_occlusion(scenes):
    H = TINY["image_size"]
    rows = sdepth.ground_depth(np.arange(H) + 0.5, H)
    assert 1 / rows[0] == pytest.approx(1 / sdepth.Z_FAR + (1 / sdepth.Z_NEAR - 1 / sdepth.Z_FAR)
                                        * 0.5 / H)
    for im in scenes.images:
        z = scenes.load_depth(im)
        inst = scenes.load_instance(im)
        ground = inst == 0
        expect = np.repeat(rows[:, None], H, 1)
        np.testing.assert_allclose(z[ground], expect[ground], atol=6e-4)   # millimetre PNG
        for k in np.unique(inst[~ground]):
            zk = np.unique(z[inst == k])
            assert len(zk) == 1                      # a fronto-parallel plate
            assert (zk[0] <= expect[inst == k] + 6e-4).all()   # in front of the ground it hides


def test_occluders_are_nearer_than_what_they_hide():
    """Two overlapping objects: the one drawn later is nearer wherever it covers the other,
    even when its contact row would put it behind."""
    from patchlens.data.scenes.render import Placement, make_identities
    from patchlens.data.scenes.params import resolve_params
    p = resolve_params({"image_size": 64})
    ids = make_identities(p, np.random.default_rng(0))
    square = next(d for d in ids if d.shape == "square")
    back = (1, square, Placement(32, 44, 30))      # lower in the image: nearer by contact
    front = (2, square, Placement(28, 30, 24))     # drawn later, contact row higher
    z = sdepth.depth_map((64, 64), [back, front])
    win, m, _, _ = object_pixels(square, front[2], (64, 64))
    z_front = np.unique(z[win][m])
    assert len(z_front) == 1
    z_back = float(sdepth.ground_depth(min(back[2].box()[3], 64), 64))
    assert z_front[0] == pytest.approx(sdepth.IN_FRONT * z_back, rel=1e-6)
    win_b, m_b, _, _ = object_pixels(square, back[2], (64, 64))
    visible_back = z[win_b][m_b]
    assert (visible_back[visible_back != z_front[0]] == np.float32(z_back)).all()


def test_oracle_depth_block_encodes_the_patch_geometric_mean(scenes):
    im = scenes.split("val")[0]
    z = scenes.load_depth(im).astype(np.float64)
    lay = oracle.oracle_layout(scenes)
    x = oracle.oracle_tokens(scenes, [im], GRID)[0, 0][:, lay.depth_slice]
    s = TINY["image_size"] // GRID[0]
    gmean = np.exp(np.log(z).reshape(GRID[0], s, GRID[1], s).mean((1, 3))).ravel()
    t = (np.log(gmean) - np.log(oracle.DEPTH_RANGE[0])) / np.log(oracle.DEPTH_RANGE[1]
                                                                  / oracle.DEPTH_RANGE[0])
    np.testing.assert_allclose(x[:, 0], oracle.DEPTH_WEIGHT * np.cos(np.pi / 2 * t), atol=1e-6)
    np.testing.assert_allclose(x[:, 1], oracle.DEPTH_WEIGHT * np.sin(np.pi / 2 * t), atol=1e-6)


def test_paired_verdict_reads_errors_as_lower_is_better():
    from patchlens.stats.paired import verdict
    row = {"model_a": "a", "model_b": "b", "ci_low": 0.1, "ci_high": 0.3}
    lower = get_task("depth").lower_is_better
    assert verdict({**row, "metric": "delta1"}, lower) == "a > b"     # a higher delta: a better
    assert verdict({**row, "metric": "rmse"}, lower) == "b > a"       # a larger error: b better
    assert verdict({**row, "metric": "rmse", "ci_low": -0.1}, lower) == ""


def test_depth_png_round_trip_and_refusals(tmp_path):
    from PIL import Image

    from patchlens.data.dataset import depth_to_png
    from patchlens.data.layout import write_depth_png, write_layout
    from patchlens.errors import DataError

    z = np.array([[0.0, np.nan, 1.2344], [np.inf, 65.535, 0.0004]])
    assert depth_to_png(z).tolist() == [[0, 0, 1234], [0, 65535, 1]]   # > 0 stays measured
    with pytest.raises(ValueError, match="16-bit"):
        depth_to_png(np.array([70.0]))
    rgb = tmp_path / "images" / "a.png"
    rgb.parent.mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(rgb)
    (tmp_path / "depth").mkdir()
    write_depth_png(z, tmp_path / "depth" / "a.png")
    row = {"image": "a", "path": "images/a.png", "split": "val", "height": 2, "width": 3,
           "depth": "depth/a.png"}
    write_layout(tmp_path, [row], ["scene"])
    got = Dataset(tmp_path).load_depth("a")
    np.testing.assert_array_equal(np.isnan(got), [[True, True, False], [True, False, False]])
    assert got[0, 2] == pytest.approx(1.234) and got[1, 1] == pytest.approx(65.535)
    Image.fromarray(np.ones((2, 3), np.uint8)).save(tmp_path / "depth" / "a.png")  # 8-bit
    with pytest.raises(DataError, match="a.png: mode L depth map"):
        Dataset(tmp_path).load_depth("a")
    with pytest.raises(DataError, match="a.png: mode L depth map"):
        write_layout(tmp_path, [row], ["scene"])
