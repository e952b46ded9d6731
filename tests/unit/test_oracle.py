"""The ``oracle`` baseline: ground-truth patch features that every evaluator must max out on."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from patchlens.data.dataset import Dataset
from patchlens.data.scenes import generate_scenes
from patchlens.models import oracle
from patchlens.evaluation.upsample import resize_bilinear

TINY = dict(image_size=64, n_train=12, n_val=8, n_gallery=0, n_videos=1, n_frames=3, n_pairs=4,
            n_keypoints=8, n_identities=12, n_shots_max=2, patch_align=16)
GRID = (4, 4)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Dataset:
    root = tmp_path_factory.mktemp("oracle") / "scenes"
    generate_scenes(root, TINY)
    return Dataset(root)


@pytest.fixture(scope="module")
def tokens(ds) -> np.ndarray:
    return oracle.oracle_tokens(ds, ds.images, GRID)


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def _majority_loop(label_map, grid):
    """Reference: majority label per patch by explicit loops over pixel-centre patch membership."""
    H, W = label_map.shape
    out = np.zeros(grid, int)
    for i in range(grid[0]):
        for j in range(grid[1]):
            rows = [r for r in range(H) if i <= (r + 0.5) * grid[0] / H < i + 1]
            cols = [c for c in range(W) if j <= (c + 0.5) * grid[1] / W < j + 1]
            vals, counts = np.unique(label_map[np.ix_(rows, cols)], return_counts=True)
            out[i, j] = vals[np.argmax(counts)]
    return out


def _patch_labels(ds, images, tok):
    """Per object patch wholly inside one object: class, identity (from the class / identity
    share blocks) and its image. Patches on an object's outline carry the mixture of what they
    cover, so the similarity order below is a statement about pure patches."""
    lay = oracle.oracle_layout(ds)
    cls_block = tok[:, 0, :, lay.class_slice]
    cls = cls_block.argmax(-1)
    ident_block = tok[:, 0, :, lay.identity_slice]
    ident = np.where(ident_block.max(-1) > 0, ident_block.argmax(-1), -1)
    img = np.repeat(np.arange(len(images)), tok.shape[2]).reshape(cls.shape)
    pure = np.isclose(cls_block.max(-1), oracle.CLASS_WEIGHT) & np.isclose(
        ident_block.max(-1), oracle.IDENTITY_WEIGHT)
    keep = (cls > 0) & pure
    return tok[:, 0][keep], cls[keep], ident[keep], img[keep]


def test_shape_and_channels(ds, tokens):
    n_cls = len(ds.classes)
    n_id = int(ds.objects["identity"].max()) + 1
    C = n_cls + n_id + oracle.INSTANCE_SLOTS + oracle.UV_DIMS + oracle.DEPTH_DIMS
    assert oracle.oracle_channels(ds) == C
    assert tokens.shape == (len(ds.images), 1, GRID[0] * GRID[1], C)
    assert tokens.dtype == np.float32


@pytest.mark.parametrize("grid", [GRID, (5, 3)])
def test_class_block_is_patch_majority(ds, grid):
    images = ds.split("val")[:3] + ds.split("pair")[:2]
    tok = oracle.oracle_tokens(ds, images, grid)
    lay = oracle.oracle_layout(ds)
    for n, im in enumerate(images):
        expect = _majority_loop(ds.load_semantic(im), grid).ravel()
        np.testing.assert_array_equal(tok[n, 0, :, lay.class_slice].argmax(-1), expect)


def test_similarity_hierarchy(ds, tokens):
    """same identity > same class, other identity > other class (cosine), over all patch pairs."""
    images = ds.split("train", "val", "pair")
    idx = [ds.images.index(i) for i in images]
    x, cls, ident, _ = _patch_labels(ds, images, tokens[idx])
    s = _cos(x, x)
    same_id = ident[:, None] == ident[None, :]
    same_cls = cls[:, None] == cls[None, :]
    off = ~np.eye(len(x), dtype=bool)
    a, b, c = s[same_id & off], s[same_cls & ~same_id], s[~same_cls]
    assert len(a) and len(b) and len(c)
    assert a.min() > b.max() and b.min() > c.max()


def test_worst_case_margins():
    """The weight inequalities hold in the worst cases: the same identity at opposite corners of
    its frame vs another identity of the class at the very same (u, v); another identity of the
    class at the opposite corner vs another class at the same (u, v)."""
    lay = oracle.OracleLayout(n_classes=3, n_identities=3)

    def patch(cls, ident, u, v):
        sem = np.full((1, 1), cls, np.uint8)
        uv = np.array([[[u, v]]], np.float32)
        return oracle.oracle_patch_features(lay, (1, 1), sem, np.ones((1, 1), np.uint8), uv,
                                            {1: ident})[0]

    q = patch(1, 0, 0.0, 0.0)
    same_id_far = patch(1, 0, 1.0, 1.0)
    other_id_near, other_id_far = patch(1, 1, 0.0, 0.0), patch(1, 1, 1.0, 1.0)
    other_cls_near = patch(2, 2, 0.0, 0.0)
    s = _cos(q[None], np.stack([same_id_far, other_id_near, other_id_far, other_cls_near]))[0]
    assert s[0] > s[1] and s[2] > s[3]


def test_cosine_knn_recovers_class_and_identity(ds, tokens):
    tr = [ds.images.index(i) for i in ds.split("train")]
    va = [ds.images.index(i) for i in ds.split("val")]
    x_tr, c_tr, id_tr, _ = _patch_labels(ds, ds.split("train"), tokens[tr])
    x_va, c_va, id_va, _ = _patch_labels(ds, ds.split("val"), tokens[va])
    nn = _cos(x_va, x_tr).argmax(1)
    seen = np.isin(c_va, c_tr)
    assert seen.any()
    np.testing.assert_array_equal(c_tr[nn][seen], c_va[seen])
    both = np.isin(id_va, id_tr)
    np.testing.assert_array_equal(id_tr[nn][both], id_va[both])


def test_uv_embedding_dot_and_monotone():
    rng = np.random.default_rng(0)
    a, b = rng.random((500, 2)), rng.random((500, 2))
    dot = (oracle.uv_embedding(a) * oracle.uv_embedding(b)).sum(-1)
    d = np.abs(a - b)
    np.testing.assert_allclose(dot, np.cos(np.pi / 2 * d).sum(-1), atol=1e-12)
    # dominance: closer in both coordinates -> strictly larger dot product
    closer = (d[:, None, :] < d[None, :, :]).all(-1)
    assert (dot[:, None] > dot[None, :])[closer].all()


def test_within_an_object_uv_decides_keypoints(ds):
    """Nearest-neighbour transfer of the pair keypoints on upsampled oracle features reaches
    PCK@0.1 near 1 (the keypoint protocol's maximum) with 4-px patches."""
    grid = (16, 16)
    kp = ds.keypoints
    hits = []
    for pair, g in kp.groupby("pair"):
        src, trg = g["src_image"].iloc[0], g["trg_image"].iloc[0]
        tok = oracle.oracle_tokens(ds, [src, trg], grid)[:, 0].reshape(2, *grid, -1)
        fs, ft = resize_bilinear(tok[0], (64, 64)), resize_bilinear(tok[1], (64, 64))
        q = fs[g["src_y"].to_numpy(), g["src_x"].to_numpy()]
        flat = ft.reshape(-1, ft.shape[-1])
        best = _cos(q, flat).argmax(1)
        py, px = np.divmod(best, 64)
        err = np.hypot(px - g["trg_x"].to_numpy(), py - g["trg_y"].to_numpy())
        r = g.iloc[0]
        side = max(r["trg_x1"] - r["trg_x0"], r["trg_y1"] - r["trg_y0"])
        hits.extend(err <= 0.1 * side)
    assert np.mean(hits) >= 0.95


def test_constructed_maps_give_known_features():
    """2x2 grid on an 8x8 image: left half instance 1 (class 1, identity 0), top-right quadrant
    instance 2 (class 2, no identity), bottom-right background."""
    lay = oracle.OracleLayout(n_classes=3, n_identities=1)
    sem = np.zeros((8, 8), np.uint8)
    inst = np.zeros((8, 8), np.uint8)
    sem[:, :4], inst[:, :4] = 1, 1
    sem[:4, 4:], inst[:4, 4:] = 2, 2
    uv = np.full((8, 8, 2), np.nan, np.float32)
    uv[:, :4, 0] = 0.25
    uv[:, :4, 1] = np.linspace(0, 1, 8)[:, None]
    x = oracle.oracle_patch_features(lay, (2, 2), sem, inst, uv, {1: 0})
    cls = x[:, lay.class_slice]
    np.testing.assert_array_equal(cls.argmax(1), [1, 2, 1, 0])
    np.testing.assert_array_equal(cls.max(1), oracle.CLASS_WEIGHT)
    idb = x[:, lay.identity_slice]
    assert idb[0, 0] == idb[2, 0] == oracle.IDENTITY_WEIGHT        # identity 0
    assert idb[1, 1 + (2 - 1)] == oracle.IDENTITY_WEIGHT           # instance slot of instance 2
    assert not idb[3].any()                                         # background: no identity
    top_v, bottom_v = np.linspace(0, 1, 8)[:4].mean(), np.linspace(0, 1, 8)[4:].mean()
    np.testing.assert_allclose(x[0, lay.uv_slice] / oracle.UV_WEIGHT,
                               oracle.uv_embedding(np.array([0.25, top_v])), atol=1e-6)
    np.testing.assert_allclose(x[2, lay.uv_slice] / oracle.UV_WEIGHT,
                               oracle.uv_embedding(np.array([0.25, bottom_v])), atol=1e-6)
    assert not x[1, lay.uv_slice].any() and not x[3, lay.uv_slice].any()
    # void pixels are ignored; an all-void patch gets no class
    sem2 = sem.copy()
    sem2[4:, 4:] = 255
    sem2[:3, :4] = 255
    x2 = oracle.oracle_patch_features(lay, (2, 2), sem2, None, None)
    np.testing.assert_array_equal(x2[:, lay.class_slice].argmax(1)[:3], [1, 2, 1])
    assert not x2[3].any()


def test_video_instances_keep_their_channel(ds, tokens):
    lay = oracle.oracle_layout(ds)
    for seq, frames in ds.sequences.items():
        for f in frames:
            n = ds.images.index(f)
            inst = ds.load_instance(f)
            rows = ds.objects[ds.objects["image"] == f]
            for r in rows.to_dict("records"):
                blocks = inst.reshape(4, 16, 4, 16).transpose(0, 2, 1, 3).reshape(16, -1)
                full = (blocks == r["instance"]).all(1)  # patches entirely inside the instance
                ch = lay.n_classes + r["identity"]
                assert (tokens[n, 0, full, ch] == oracle.IDENTITY_WEIGHT).all()


def test_missing_maps_give_zero_blocks(ds, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(ds.root, root)
    m = pd.read_csv(root / "manifest.csv", keep_default_na=False, dtype=str)
    im_a, im_b = ds.split("val")[:2]
    m.loc[m["image"] == im_a, ["instance", "uv"]] = ""
    m.loc[m["image"] == im_b, ["semantic", "instance", "uv", "depth"]] = ""
    m.to_csv(root / "manifest.csv", index=False)
    d2 = Dataset(root)
    lay = oracle.oracle_layout(d2)
    t = oracle.oracle_tokens(d2, [im_a, im_b], GRID)[:, 0]
    full = oracle.oracle_tokens(ds, [im_a], GRID)[0, 0]
    np.testing.assert_array_equal(t[0, :, lay.class_slice], full[:, lay.class_slice])
    assert not t[0, :, lay.identity_slice].any() and not t[0, :, lay.uv_slice].any()
    np.testing.assert_array_equal(t[0, :, lay.depth_slice], full[:, lay.depth_slice])
    assert not t[1].any()


def test_imports_without_torch():
    code = ("import sys, patchlens.models.oracle, patchlens.data.scenes; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_class_beyond_classes_csv_is_a_data_error():
    lay = oracle.OracleLayout(n_classes=2, n_identities=0)
    with pytest.raises(oracle.DataError, match="classes.csv"):
        oracle.oracle_patch_features(lay, (1, 1), np.full((4, 4), 5, np.uint8))
