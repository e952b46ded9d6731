"""Keypoint transfer PCK: smooth coordinate codes are exact, random ones give chance, hand cases."""
import logging

import numpy as np
import pandas as pd
import pytest

from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore
from patchlens.tasks import keypoints as K
from patchlens.evaluation.upsample import resize_bilinear
from helpers.video_fixtures import box_uv, patch_centres, rbf_code, write_pair_dataset, write_tokens

GRID = (16, 16)
SRC_SIZE, TRG_SIZE = (128, 128), (112, 144)          # (H, W); the grid covers each whole image


def identity(layer, x):
    return x


def kp_rows(pair, src, trg, src_xy, trg_xy, trg_box):
    """keypoints.csv rows; trg_box = (x0, y0, x1, y1)."""
    n = len(src_xy)
    return pd.DataFrame({"pair": pair, "src_image": src, "trg_image": trg, "kp": np.arange(n),
                         "src_x": src_xy[:, 0], "src_y": src_xy[:, 1],
                         "trg_x": trg_xy[:, 0], "trg_y": trg_xy[:, 1],
                         "trg_x0": trg_box[0], "trg_y0": trg_box[1],
                         "trg_x1": trg_box[2], "trg_y1": trg_box[3]})


@pytest.fixture(scope="module")
def uv_pairs(tmp_path_factory):
    """20 pairs of boxes with known object coordinates; layer 0 = smooth code of the object
    coordinates (oracle), layer 1 = random features. 20 keypoints per pair."""
    tmp = tmp_path_factory.mktemp("kp")
    rng = np.random.default_rng(0)
    sizes, tables, oracle, images = {}, [], [], []
    for i in range(20):
        y0, x0 = rng.uniform(4, 24, 2)
        sb = (y0, x0, y0 + rng.uniform(80, 100), x0 + rng.uniform(80, 100))        # y0 x0 y1 x1
        y0, x0 = rng.uniform(4, 12), rng.uniform(4, 40)
        tb = (y0, x0, y0 + rng.uniform(80, 95), x0 + rng.uniform(80, 100))
        uv = rng.uniform(0.1, 0.9, (20, 2))                                          # (v, u)
        def to_xy(b):   # object coordinates -> pixels (x, y) inside box b = (y0, x0, y1, x1)
            return np.stack([b[1] + uv[:, 1] * (b[3] - b[1]), b[0] + uv[:, 0] * (b[2] - b[0])], 1)
        src_xy, trg_xy = to_xy(sb), to_xy(tb)
        s, t = f"s{i}", f"t{i}"
        sizes[s], sizes[t] = SRC_SIZE, TRG_SIZE
        tables.append(kp_rows(f"p{i}", s, t, src_xy, trg_xy, (tb[1], tb[0], tb[3], tb[2])))
        oracle += [rbf_code(box_uv(SRC_SIZE, GRID, sb)), rbf_code(box_uv(TRG_SIZE, GRID, tb))]
        images += [s, t]
    kp = pd.concat(tables, ignore_index=True)
    root = write_pair_dataset(tmp / "ds", sizes, kp)
    oracle = np.stack(oracle)
    rand = rng.standard_normal(oracle.shape).astype(np.float32)
    store = FeatureStore(write_tokens(tmp / "f.h5", np.stack([oracle, rand], 1), images))
    return Dataset(root), store, kp


def chance_pck(kp, alpha):
    """PCK of a prediction drawn uniformly among the trg patch centres (where the maxima of a
    bilinearly upsampled random score map lie), averaged over the keypoints."""
    ys, xs = patch_centres(TRG_SIZE, GRID)
    cy, cx = np.meshgrid(ys, xs, indexing="ij")
    box = np.maximum(kp.trg_x1 - kp.trg_x0, kp.trg_y1 - kp.trg_y0).to_numpy()
    tx, ty = kp.trg_x.to_numpy()[:, None], kp.trg_y.to_numpy()[:, None]
    d = np.hypot(cx.ravel() - tx, cy.ravel() - ty)
    return float(np.mean(d <= alpha * box[:, None]))


def test_oracle_coordinates_are_exact_and_random_is_chance(uv_pairs):
    ds, store, kp = uv_pairs
    df = K.run(store, ds, identity, {**K.DEFAULT_PARAMS, "alphas": [0.05, 0.1, 0.15]})
    assert set(df.category) == {"none", "all"}      # unlabelled images: one category
    v = df[df.category == "all"].set_index(["layer", "metric"]).value
    assert v[0, "pck@0.1"] >= 0.99 and v[0, "pck@0.15"] >= 0.99
    assert (df.n_eval == len(kp)).all() and (df.n_skipped == 0).all()
    for alpha in (0.1, 0.15):
        chance = chance_pck(kp, alpha)
        tol = 4 * np.sqrt(chance * (1 - chance) / len(kp))       # 4 binomial standard errors
        assert abs(v[1, f"pck@{alpha:g}"] - chance) <= tol
    assert list(df.columns) == ["layer", "seed", "metric", "value", "n_eval", "n_skipped",
                                "category"]
    assert set(df.metric) == {"pck@0.05", "pck@0.1", "pck@0.15"}
    assert set(K.run(store, ds, identity, {}).metric) == {"pck@0.01", "pck@0.05", "pck@0.1"}


def test_capped_resolution_keeps_oracle_exact(uv_pairs):
    ds, store, _ = uv_pairs
    df = K.run(store, ds, identity, {**K.DEFAULT_PARAMS, "max_side": 48, "alphas": [0.1]},
               layers=[0])
    assert df.layer.tolist() == [0, 0] and (df.value >= 0.99).all()


def test_known_displacements_give_the_computed_fraction(tmp_path, caplog):
    """Trg features: one-hot patch identity; src features at the keypoints' patches: the one-hot
    code of a chosen trg patch, so each prediction is that trg patch's centre pixel exactly. The
    true trg points are those centres displaced by known offsets."""
    patch, g = 7, 8
    size = (patch * g, patch * g)                       # patch centres at pixels 7 j + 3
    src_cells = np.array([(1, 1), (1, 4), (2, 6), (4, 2), (5, 5), (6, 1), (6, 6), (3, 3)])
    trg_cells = np.array([(3, 3), (4, 4), (2, 5), (5, 2), (3, 5), (4, 3), (2, 2), (5, 4)])
    disp = np.array([(0, 0), (2, 0), (0, -4), (5, 0), (0, 6), (-9, 0), (0, 13), (3, 4)], float)
    src = np.zeros((g, g, g * g), np.float32)
    src[src_cells[:, 0], src_cells[:, 1], trg_cells[:, 0] * g + trg_cells[:, 1]] = 1
    trg = np.eye(g * g, dtype=np.float32).reshape(g, g, g * g)
    src_xy = src_cells[:, ::-1] * patch + 3.0
    centre = trg_cells[:, ::-1] * patch + 3.0
    np.testing.assert_allclose(K.predict(src, size, src_xy, trg, size), centre)
    box = (3, 3, 53, 53)                                # longer side 50 px
    rows = kp_rows("hand", "s", "t", src_xy, centre + disp, box)
    outside = kp_rows("hand", "s", "t", np.array([[-3.0, 10.0]]), np.array([[20.0, 20.0]]), box)
    outside["kp"] = 99
    root = write_pair_dataset(tmp_path / "ds", {"s": size, "t": size},
                              pd.concat([rows, outside], ignore_index=True))
    store = FeatureStore(write_tokens(tmp_path / "f.h5", np.stack([src, trg]), ["s", "t"], patch))
    alphas = [0.05, 0.1, 0.15]
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = K.run(store, Dataset(root), identity, {**K.DEFAULT_PARAMS, "alphas": alphas})
    assert "'hand'" in caplog.text and "[99]" in caplog.text
    dist = np.hypot(disp[:, 0], disp[:, 1])             # 0, 2, 4, 5, 6, 9, 13, 5
    for a in alphas:
        row = df[(df.metric == f"pck@{a:g}") & (df.category == "all")].iloc[0]
        assert row.value == pytest.approx(np.mean(dist <= a * 50))
        assert row.n_eval == len(disp) and row.n_skipped == 1


def test_sample_bilinear_matches_resize_at_pixels():
    rng = np.random.default_rng(3)
    fmap = rng.standard_normal((5, 7, 4)).astype(np.float32)
    size = (23, 41)
    up = resize_bilinear(fmap, size)
    xy = np.array([[0, 0], [40, 22], [13, 7], [5, 20], [39, 1]], float)
    got = K.sample_bilinear(fmap, xy, size)
    np.testing.assert_allclose(got, up[xy[:, 1].astype(int), xy[:, 0].astype(int)], atol=1e-5)


def test_capped_size():
    assert K.capped_size((480, 854), None) == (480, 854)
    assert K.capped_size((480, 854), 1000) == (480, 854)
    assert K.capped_size((480, 854), 256) == (round(480 * 256 / 854), 256)


def test_empty_box_skips_pair_and_no_pairs_in_split_is_an_error(tmp_path, caplog):
    size = (32, 32)
    xy = np.array([[5.0, 5.0], [10.0, 12.0]])
    rows = pd.concat([kp_rows("ok", "a", "b", xy, xy, (0, 0, 20, 20)),
                      kp_rows("flat", "a", "b", xy, xy, (4, 4, 4, 4))], ignore_index=True)
    root = write_pair_dataset(tmp_path / "ds", {"a": size, "b": size}, rows)
    feats = np.random.default_rng(0).standard_normal((2, 4, 4, 8)).astype(np.float32)
    store = FeatureStore(write_tokens(tmp_path / "f.h5", feats, ["a", "b"]))
    with caplog.at_level(logging.WARNING, logger="patchlens"):
        df = K.run(store, Dataset(root), identity, dict(K.DEFAULT_PARAMS))
    assert "'flat'" in caplog.text and "box" in caplog.text
    assert (df.n_eval == 2).all() and (df.n_skipped == 2).all() and not df.value.isna().any()
    with pytest.raises(DataError, match="split 'other'"):
        K.run(store, Dataset(root), identity, {**K.DEFAULT_PARAMS, "split": "other"})
    rows.loc[rows.pair == "flat", "pair"] = "ok"
    rows.loc[rows.index[-1], "trg_image"] = "a"                   # pair 'ok' now names two trgs
    rows.to_csv(root / "keypoints.csv", index=False)
    with pytest.raises(DataError, match="pair 'ok' names more than one"):
        K.run(store, Dataset(root), identity, dict(K.DEFAULT_PARAMS))


@pytest.mark.parametrize("key,bad", [("alphas", []), ("alphas", [0.1, -1]), ("max_side", 0),
                                     ("max_side", 12.5)])
def test_bad_params_raise_config_error(key, bad):
    with pytest.raises(ConfigError, match=rf"tasks\.keypoints\.params\.{key}"):
        K.check_params({key: bad})


def test_prediction_is_invariant_to_per_patch_feature_scale():
    """Cosine matching: rescaling every patch vector by a positive factor changes nothing."""
    rng = np.random.default_rng(5)
    src, trg = rng.standard_normal((2, 6, 9, 16)).astype(np.float32)
    xy = rng.uniform(0, 40, (12, 2))
    ref = K.predict(src, (48, 50), xy, trg, (45, 72))
    scale = lambda a: a * rng.uniform(0.2, 5, a.shape[:2] + (1,)).astype(np.float32)  # noqa: E731
    np.testing.assert_array_equal(K.predict(scale(src), (48, 50), xy, scale(trg), (45, 72)), ref)


def _labelled(root, labels: dict[str, str], names: dict[int, str]):
    """Give manifest images labels and classes.csv names (categories of the pairs)."""
    man = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    man["labels"] = man["image"].map(labels).fillna("")
    man.to_csv(root / "manifest.csv", index=False)
    pd.DataFrame({"class": list(names), "name": list(names.values())}).to_csv(
        root / "classes.csv", index=False)


def test_pck_is_averaged_per_category_then_over_categories(uv_pairs, tmp_path):
    """Category 'cat' = 15 pairs of oracle features (PCK 1), 'dog' = 5 pairs whose trg points
    are moved far off (PCK 0): keypoint pooling would give 0.75, the SPair mean gives 0.5."""
    ds0, store, kp = uv_pairs
    kp = kp.copy()
    far = kp.pair.isin([f"p{i}" for i in range(15, 20)])
    kp.loc[far, "trg_x"] = np.where(kp.loc[far, "trg_x"] < 72, 140.0, 2.0)
    root = tmp_path / "ds"
    import shutil
    shutil.copytree(ds0.root, root)
    kp.to_csv(root / "keypoints.csv", index=False)
    _labelled(root, {f"s{i}": ("1" if i < 15 else "2") for i in range(20)}, {1: "cat", 2: "dog"})
    df = K.run(store, Dataset(root), identity, {"alphas": [0.1]}, layers=[0])
    v = df.set_index("category").value
    assert v["cat"] >= 0.99 and v["dog"] == 0
    assert v["all"] == pytest.approx((v["cat"] + v["dog"]) / 2)      # not the keypoint mean
    n = df.set_index("category").n_eval
    assert (n["cat"], n["dog"], n["all"]) == (300, 100, 400)


def test_teaching_matters_sampling_draws_k_pairs_per_category(uv_pairs, tmp_path):
    ds0, store, kp = uv_pairs
    root = tmp_path / "ds"
    import shutil
    shutil.copytree(ds0.root, root)
    _labelled(root, {f"s{i}": ("1" if i < 12 else "2") for i in range(20)}, {1: "cat", 2: "dog"})
    p = {"alphas": [0.1], "sampling": "teaching_matters", "pairs_per_category": 5, "seed": 3}
    df = K.run(store, Dataset(root), identity, p, layers=[1])
    n = df.set_index("category").n_eval
    assert (n["cat"], n["dog"]) == (5 * 20, 5 * 20) and (df.seed == 3).all()
    again = K.run(store, Dataset(root), identity, p, layers=[1])
    pd.testing.assert_frame_equal(df, again)                          # seeded
    other = K.run(store, Dataset(root), identity, {**p, "seed": 4}, layers=[1])
    assert not np.allclose(other.value, df.value)                     # a different draw
    few = K.run(store, Dataset(root), identity, {**p, "pairs_per_category": 10}, layers=[1])
    assert few.set_index("category").n_eval["dog"] == 8 * 20          # all 8 'dog' pairs
    with pytest.raises(ConfigError, match=r"tasks\.keypoints\.params\.sampling"):
        K.check_params({"sampling": "random"})


def test_unknown_sampling_fails_at_config_validation():
    from pathlib import Path

    import yaml

    from patchlens.startup import validate

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    cfg["tasks"]["keypoints"]["params"] = {"sampling": "random"}
    with pytest.raises(ConfigError, match="sampling|random"):
        validate(cfg)
