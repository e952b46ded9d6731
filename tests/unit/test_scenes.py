"""The built-in ``scenes`` generator: determinism, ground-truth consistency, split contracts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchlens.data import scenes
from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError

TINY = dict(image_size=64, n_train=12, n_val=6, n_gallery=6, n_videos=2, n_frames=4, n_pairs=3,
            n_keypoints=6, n_identities=12, n_shots_max=2, patch_align=16,
            align_splits=["train", "val", "crop", "gallery"])
ALIGNED = ("train", "val", "crop", "gallery")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "a"
    scenes.generate_scenes(out, TINY)
    return out


@pytest.fixture(scope="module")
def ds(root) -> Dataset:
    return Dataset(root)


@pytest.fixture(scope="module")
def p() -> dict:
    return scenes.resolve_params(TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_same_seed_identical_other_seed_differs(root, tmp_path):
    scenes.generate_scenes(tmp_path / "b", TINY)
    a, b = _files(root), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    scenes.generate_scenes(tmp_path / "c", {**TINY, "seed": 1})
    c = _files(tmp_path / "c")
    assert a["objects.csv"] != c["objects.csv"]
    assert a["images/train_0000.png"] != c["images/train_0000.png"]


def test_manifest_reads_and_has_every_kind(ds, p):
    for kind in ("semantic", "instance", "objects", "keypoints", "video", "labels", "uv"):
        assert ds.has(kind), kind
    sizes = ds.manifest["split"].value_counts().to_dict()
    assert sizes == {"train": p["n_train"], "val": p["n_val"], "crop": p["n_identities"],
                     "gallery": p["n_gallery"], "video": p["n_videos"] * p["n_frames"],
                     "pair": 2 * p["n_pairs"]}
    assert len(ds.sequences) == p["n_videos"]
    for frames in ds.sequences.values():
        assert [ds.manifest.at[f, "frame"] for f in frames] == list(range(p["n_frames"]))
    assert (ds.manifest["height"] == p["image_size"]).all()
    n_cls = p["n_shapes"] * p["n_textures"]
    assert ds.classes["class"].tolist() == list(range(n_cls + 1))
    assert ds.classes["name"].iloc[0] == "background"
    assert ds.load_image("val_0000").shape == (64, 64, 3)


def test_masks_agree_with_objects_csv(ds):
    obj = ds.objects
    for im in ds.images:
        sem, inst, uv = ds.load_semantic(im), ds.load_instance(im), ds.load_uv(im)
        rows = obj[obj["image"] == im]
        assert sorted(rows["instance"]) == sorted(set(np.unique(inst)) - {0}), im
        np.testing.assert_array_equal(sem == 0, inst == 0)
        np.testing.assert_array_equal(np.isfinite(uv).all(-1), inst > 0)
        assert np.isnan(uv[inst == 0]).all()
        assert ((uv[inst > 0] >= 0) & (uv[inst > 0] <= 1)).all()
        for r in rows.to_dict("records"):
            m = inst == r["instance"]
            ys, xs = np.nonzero(m)
            assert (r["x0"], r["y0"], r["x1"], r["y1"]) == (xs.min(), ys.min(),
                                                            xs.max() + 1, ys.max() + 1)
            assert r["area_frac"] == pytest.approx(m.mean(), abs=1e-7)
            assert (sem[m] == r["class"]).all()
        # labels: classes present, largest total area first
        lab = ds.labels(im)
        present = sorted(set(np.unique(sem)) - {0})
        assert sorted(lab) == present
        areas = {c: (sem == c).sum() for c in present}
        assert areas[lab[0]] == max(areas.values())


def test_identity_has_one_class(ds, p):
    obj = ds.objects
    assert (obj.groupby("identity")["class"].nunique() == 1).all()
    n_cls = p["n_shapes"] * p["n_textures"]
    assert ((obj["identity"] % n_cls) + 1 == obj["class"]).all()


def test_train_covers_every_class_n_shots_times(ds, p):
    obj = ds.objects[ds.objects["image"].isin(ds.split("train"))]
    per_class = obj.groupby("class")["image"].nunique()
    n_cls = p["n_shapes"] * p["n_textures"]
    assert sorted(per_class.index) == list(range(1, n_cls + 1))
    assert (per_class >= p["n_shots_max"]).all()


def test_val_identities_recur_with_same_class_distractors(ds):
    obj = ds.objects[ds.objects["image"].isin(ds.split("val"))]
    assert not obj.duplicated(["image", "identity"]).any()
    assert (obj.groupby("identity")["image"].nunique() >= 2).all()
    # instance identification needs other identities of the same class
    assert (obj.groupby("class")["identity"].nunique() >= 2).any()


def test_crop_and_gallery_identities(ds, p):
    obj = ds.objects.set_index("image")
    crops = ds.split("crop")
    assert sorted(obj.loc[crops, "identity"]) == list(range(p["n_identities"]))
    assert (obj.loc[crops, "area_frac"] > 0.3).all()  # large, alone
    gal = ds.objects[ds.objects["image"].isin(ds.split("gallery"))]
    targets = gal[gal["instance"] == 1]
    assert len(targets) == p["n_gallery"]
    # target side / image side lies at one of the asked scales (aligned: within a grid step)
    side = np.maximum(targets["x1"] - targets["x0"], targets["y1"] - targets["y0"]) / 64
    step = p["patch_align"] / 64
    near = np.min(np.abs(side.to_numpy()[:, None] - np.array(p["retrieval_scales"])[None]), 1)
    assert (near <= step / 2 + 1e-9).all()


def test_identities_of_a_class_look_different(p):
    ids = scenes.make_identities(p, np.random.default_rng(0))
    n_cls = p["n_shapes"] * p["n_textures"]
    u, v = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32))
    for a in range(n_cls):
        b = a + n_cls
        assert ids[a].cls == ids[b].cls
        diff = np.abs(scenes.texture(ids[a], u, v) - scenes.texture(ids[b], u, v)).mean()
        assert diff > 0.1, (a, b, diff)


def test_video_instances_consistent_and_moving(ds):
    obj = ds.objects
    moved = 0
    for seq, frames in ds.sequences.items():
        rows = obj[obj["image"].isin(frames)]
        assert (rows.groupby("instance")["identity"].nunique() == 1).all()
        first = set(rows[rows["image"] == frames[0]]["instance"])
        assert set(rows["instance"]) == first  # all visible in frame 0, no new ones later
        for k in first:
            uv0 = ds.load_uv(frames[0])[ds.load_instance(frames[0]) == k]
            c0 = np.argwhere(ds.load_instance(frames[0]) == k).mean(0)
            last = ds.load_instance(frames[-1]) == k
            if last.any():
                moved += np.abs(np.argwhere(last).mean(0) - c0).max() > 0.5
            assert np.isfinite(uv0).all()
    assert moved > 0


def _bilinear(a, x, y):
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return ((1 - fy) * ((1 - fx) * a[y0, x0] + fx * a[y0, x0 + 1])
            + fy * ((1 - fx) * a[y0 + 1, x0] + fx * a[y0 + 1, x0 + 1]))


def test_keypoints_map_through_uv(ds, p):
    kp = ds.keypoints
    assert len(kp) == p["n_pairs"] * p["n_keypoints"]
    tol = 1.0 / (p["pair_scale"][0] * p["image_size"])  # uv change of <= 0.71 px
    for pair, g in kp.groupby("pair"):
        src, trg = g["src_image"].iloc[0], g["trg_image"].iloc[0]
        assert ds.manifest.at[src, "split"] == ds.manifest.at[trg, "split"] == "pair"
        si, ti = ds.load_instance(src), ds.load_instance(trg)
        su, tu = ds.load_uv(src), ds.load_uv(trg)
        assert not g.duplicated(["src_x", "src_y"]).any()
        sx, sy = g["src_x"].to_numpy(), g["src_y"].to_numpy()
        tx, ty = np.round(g["trg_x"]).astype(int), np.round(g["trg_y"]).astype(int)
        assert (si[sy, sx] > 0).all() and (ti[ty, tx] > 0).all()
        assert np.abs(su[sy, sx] - tu[ty, tx]).max() <= tol
        # uv is affine inside an object, so bilinear interpolation at the exact target position
        # (keypoints lie inside the masks) reproduces the source uv up to float32 rounding
        exact = _bilinear(tu, g["trg_x"].to_numpy(), g["trg_y"].to_numpy())
        np.testing.assert_allclose(exact, su[sy, sx], atol=1e-4)
        ys, xs = np.nonzero(ti)
        assert (g[["trg_x0", "trg_y0", "trg_x1", "trg_y1"]].to_numpy()
                == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).all()


def _aligned(ds, splits, a):
    obj = ds.objects[ds.objects["image"].isin(ds.split(*splits))]
    return (obj[["x0", "y0", "x1", "y1"]].to_numpy() % a == 0).all(1)


def test_patch_align(ds, tmp_path):
    assert _aligned(ds, ALIGNED, 16).all()
    assert not _aligned(ds, ("pair",), 16).all()  # pairs are never aligned
    free = tmp_path / "free"
    scenes.generate_scenes(free, {**TINY, "patch_align": 0, "n_videos": 0, "n_pairs": 0})
    assert not _aligned(Dataset(free), ("train", "val"), 16).all()


def test_square_aligned_masks_are_unions_of_patches(tmp_path):
    out = tmp_path / "sq"
    scenes.generate_scenes(out, {**TINY, "n_shapes": 1, "n_textures": 1, "n_identities": 2,
                                 "n_videos": 0, "n_pairs": 0, "n_gallery": 0})
    d = Dataset(out)
    for im in d.split("train", "val"):
        blocks = d.load_instance(im).reshape(4, 16, 4, 16)
        assert (blocks == blocks[:, :1, :, :1]).all(), im


@pytest.mark.parametrize("bad, key", [
    ({"n_trian": 3}, "n_trian"),
    ({"n_train": 3, "n_shots_max": 5}, "n_train"),
    ({"n_identities": 2}, "n_identities"),
    ({"objects_per_image": [3, 1]}, "objects_per_image"),
    ({"image_size": "big"}, "image_size"),
    ({"backgrounds": ["lily"]}, "backgrounds"),
    ({"n_val": 1}, "n_val"),
])
def test_bad_params_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        scenes.resolve_params({**TINY, **bad})


def test_killed_run_leaves_no_manifest(tmp_path, monkeypatch):
    out = tmp_path / "k"
    small = {**TINY, "n_videos": 0, "n_pairs": 0, "n_gallery": 0}
    scenes.generate_scenes(out, small)
    assert (out / "manifest.csv").exists()
    calls = {"n": 0}
    real = scenes.write._write_record  # the writer generate_scenes calls

    def dying(o, rec):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(o, rec)

    monkeypatch.setattr(scenes.write, "_write_record", dying)
    with pytest.raises(KeyboardInterrupt):
        scenes.generate_scenes(out, small)
    assert not (out / "manifest.csv").exists()


def test_shapes_touch_their_box():
    # every shape, rasterised at pixel centres in an aligned box, fills the box's border rows/cols
    n = 16
    c = (np.arange(n) + 0.5) / n
    u, v = np.meshgrid(c, c)
    for shape in scenes.SHAPES:
        m = scenes.shape_mask(shape, u, v)
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), shape
        assert 0.2 < m.mean() <= 1.0, shape
    masks = [scenes.shape_mask(s, u, v) for s in scenes.SHAPES]
    assert len({m.tobytes() for m in masks}) == len(masks)  # all shapes differ


def test_dataset_from_manifest_is_the_directory(tmp_path):
    """Dataset.from_manifest (what the rules pass: the manifest path) opens the same data set."""
    out = tmp_path / "m"
    scenes.generate_scenes(out, {**TINY, "n_videos": 0, "n_pairs": 0, "n_gallery": 0})
    a, b = Dataset.from_manifest(out / "manifest.csv"), Dataset(out)
    assert a.root == b.root and a.images == b.images and len(a.images) > 0
    assert (a.manifest == b.manifest).all().all()
