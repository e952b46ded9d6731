"""Attention statistics on constructed maps with known answers, and on a tiny real ViT."""
import math
import subprocess
import sys

import numpy as np
import pytest

from patchlens.analysis.attention_stats import (
    AttentionAccumulator, attention_table, centred_table, read_attention, write_attention)
from patchlens.errors import DataError
from helpers.attention_maps import shift_rows

K, PS = 4, 16  # 4 x 4 grid of 16-pixel patches
P = K * K


def _maps(rows, prefix=1, cls_mass=0.0, b=2):
    """(b, H, N, N) maps from per-head (P, P) patch-key rows; prefix keys get ``cls_mass``."""
    H = len(rows)
    N = prefix + P
    a = np.zeros((b, H, N, N))
    a[:, :, :prefix, :] = 1.0 / N  # prefix queries: ignored by every statistic
    for h, r in enumerate(rows):
        a[:, h, prefix:, :prefix] = cls_mass / prefix
        a[:, h, prefix:, prefix:] = (1 - cls_mass) * r
    return a.astype(np.float32)


def _stats(rows, **kw):
    prefix = kw.pop("prefix", 1)
    acc = AttentionAccumulator([0], (K, K), PS, prefix, kw.pop("radius", None))
    acc.add(0, _maps(rows, prefix=prefix, **kw))
    return acc.result().isel(layer=0)


def test_uniform_attention_distance_entropy_and_cls_share():
    ds = _stats([np.full((P, P), 1 / P)], cls_mass=0.25)
    # brute-force mean pairwise distance between patch centres (query and key both uniform)
    pts = [(y, x) for y in range(K) for x in range(K)]
    expect = np.mean([math.dist(p, q) for p in pts for q in pts]) * PS
    assert ds.distance.item() == pytest.approx(expect, rel=1e-5)
    assert ds.entropy.item() == pytest.approx(math.log(K * K), rel=1e-5)
    assert ds.cls_share.item() == pytest.approx(0.25, rel=1e-5)
    assert ds.centred.sum().item() == pytest.approx(1.0, rel=1e-6)
    assert ds.centred.sel(dy=0, dx=0).item() == pytest.approx(1 / P, rel=1e-5)  # each query once


def test_identity_attention_has_zero_distance_and_entropy():
    ds = _stats([np.eye(P)], cls_mass=0.5)
    assert ds.distance.item() == pytest.approx(0.0, abs=1e-6)
    assert ds.entropy.item() == pytest.approx(0.0, abs=1e-6)
    assert ds.centred.sel(dy=0, dx=0).item() == pytest.approx(1.0, rel=1e-6)


def test_right_looking_head_distance_is_one_patch_and_map_peaks_right():
    ds = _stats([shift_rows(K, 0, 1)], cls_mass=0.1)
    assert ds.distance.item() == pytest.approx(PS, rel=1e-5)
    c = ds.centred.isel(head=0)
    assert c.sel(dy=0, dx=1).item() == pytest.approx((K - 1) / K, rel=1e-5)
    assert c.sel(dy=0, dx=-1).item() == pytest.approx(1 / K, rel=1e-5)  # last column looks left
    down = _stats([shift_rows(K, 1, 0)]).centred.isel(head=0)
    assert down.sel(dy=1, dx=0).item() == pytest.approx((K - 1) / K, rel=1e-5)


def test_diversity_of_opposite_heads_and_identical_heads():
    same = _stats([shift_rows(K, 0, 1), shift_rows(K, 0, 1)])
    assert same.diversity.item() == pytest.approx(0.0, abs=1e-9)
    # right vs left: disjoint point masses (JS = log 2) except in the first and last column,
    # where both fall back onto the same neighbour (JS = 0)
    opp = _stats([shift_rows(K, 0, 1), shift_rows(K, 0, -1)])
    assert opp.diversity.item() == pytest.approx(math.log(2) * (K - 2) / K, rel=1e-6)


def test_radius_crops_the_full_canvas_and_register_prefix():
    rng = np.random.default_rng(0)
    rows = [rng.dirichlet(np.ones(P), size=P) for _ in range(3)]
    full = _stats(rows, prefix=5, cls_mass=0.3)
    crop = _stats(rows, prefix=5, cls_mass=0.3, radius=1)
    assert crop.centred.shape == (3, 3, 3)
    np.testing.assert_allclose(crop.centred, full.centred.sel(dy=[-1, 0, 1], dx=[-1, 0, 1]),
                               rtol=1e-6)
    np.testing.assert_allclose(full.cls_share, 0.3, rtol=1e-5)
    np.testing.assert_allclose(full.centred.sum(("dy", "dx")), 1.0, rtol=1e-6)


def test_streaming_over_batches_equals_one_batch():
    rng = np.random.default_rng(1)
    a = rng.dirichlet(np.ones(1 + P), size=(6, 2, 1 + P)).astype(np.float32)
    one = AttentionAccumulator([0], (K, K), PS, 1)
    one.add(0, a)
    two = AttentionAccumulator([0], (K, K), PS, 1)
    two.add(0, a[:2])
    two.add(0, a[2:])
    r1, r2 = one.result(), two.result()
    assert r2.attrs["n_images"] == 6
    for v in ("distance", "entropy", "cls_share", "diversity", "centred"):
        np.testing.assert_allclose(r2[v], r1[v], rtol=1e-5, atol=1e-9)


def test_wrong_token_count_names_the_fix():
    acc = AttentionAccumulator([0], (K, K), PS, 1)
    with pytest.raises(DataError, match="num_prefix_tokens"):
        acc.add(0, np.ones((1, 1, P, P), np.float32) / P)  # prefix token missing


def test_real_vit_end_to_end_write_read_and_tables(tmp_path):
    torch = pytest.importorskip("torch")
    import timm

    from patchlens.analysis.attention_stats import attention_statistics
    from patchlens.models.attention import attention_modules

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, depth=2,
                              embed_dim=48, num_heads=3, img_size=56, dynamic_img_size=True)
    batches = [torch.randn(2, 3, 56, 70), torch.randn(1, 3, 56, 70)]
    ds = attention_statistics(model, iter(batches), 14, (4, 5), model.num_prefix_tokens,
                              {"radius": None})
    assert all(m.fused_attn for m in attention_modules(model)) == bool(
        timm.layers.use_fused_attn())
    assert ds.sizes == {"layer": 2, "head": 3, "dy": 7, "dx": 9}
    assert ds.attrs["n_images"] == 3 and ds.attrs["num_prefix_tokens"] == 5
    assert ((ds.cls_share > 0) & (ds.cls_share < 1)).all()
    max_dist = math.hypot(3, 4) * 14
    assert ((ds.distance > 0) & (ds.distance < max_dist)).all()
    np.testing.assert_allclose(ds.centred.sum(("dy", "dx")), 1.0, rtol=1e-5)

    path = tmp_path / "attention" / "tiny" / "scenes.h5"
    write_attention(path, ds, model="tiny", dataset="scenes")
    back = read_attention(path)
    assert back.attrs["model"] == "tiny" and list(back.attrs["grid"]) == [4, 5]
    np.testing.assert_allclose(back.centred, ds.centred)

    tab = attention_table(back, "tiny", "scenes")
    assert list(tab.columns) == ["model", "dataset", "layer", "head", "metric", "value"]
    assert len(tab) == 3 * 2 * 3 + 2
    assert (tab.loc[tab.metric == "diversity", "head"] == -1).all()
    cen = centred_table(back, "tiny")
    assert list(cen.columns) == ["model", "layer", "head", "dy", "dx", "value"]
    assert len(cen) == 2 * 3 * 7 * 9


def test_write_attention_requires_model(tmp_path):
    acc = AttentionAccumulator([0], (K, K), PS, 1)
    acc.add(0, _maps([np.eye(P)]))
    with pytest.raises(ValueError, match="model"):
        write_attention(tmp_path / "a.h5", acc.result())
    assert not list(tmp_path.iterdir())


def test_analysis_modules_do_not_import_torch():
    code = ("import sys, patchlens.analysis.attention_stats, patchlens.analysis.offset_heads, "
            "patchlens.analysis.cka, patchlens.analysis.best_layer; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
