"""The torch k-NN path (CUDA when asked and present; run here on the CPU through the same code)
gives faiss's neighbours and similarities up to float32 ties."""
import numpy as np
import pytest

from patchlens import device as dev
from patchlens.evaluation.knn import CosineIndex, knn_scores, l2_normalize


@pytest.mark.parametrize("nq, n, c, k", [(500, 300, 32, 10), (37, 5, 8, 20), (2000, 1500, 64, 5)])
def test_torch_topk_equals_faiss(nq, n, c, k):
    rng = np.random.default_rng(n)
    bank, q = rng.normal(size=(n, c)), rng.normal(size=(nq, c))
    f = CosineIndex(bank, backend="faiss")
    t = CosineIndex(bank, backend="torch", device="cpu")
    sf, i_f = f.search(q, k)
    st, it = t.search(q, k)
    assert st.shape == sf.shape == (nq, min(k, n)) and st.dtype == np.float32
    np.testing.assert_allclose(st, sf, atol=1e-5)
    # independent: numpy's full similarity matrix, argsorted
    full = l2_normalize(q) @ l2_normalize(bank).T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :min(k, n)]
    gap = np.diff(-np.sort(-full, axis=1), axis=1)[:, :min(k, n)]
    clear = (np.abs(gap) > 1e-5).all(axis=1)  # rows without near-ties among the top k
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(it[clear], ref[clear])
    np.testing.assert_array_equal(i_f[clear], ref[clear])


def test_small_chunks_give_the_same_result(monkeypatch):
    import patchlens.evaluation.knn as knn

    rng = np.random.default_rng(1)
    bank, q = rng.normal(size=(200, 16)), rng.normal(size=(300, 16))
    whole = CosineIndex(bank, backend="torch", device="cpu").search(q, 7)
    monkeypatch.setitem(knn._CHUNK_BYTES, "cpu", 4 * 200 * 13)  # 13 queries per chunk
    chunked = CosineIndex(bank, backend="torch", device="cpu").search(q, 7)
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_allclose(whole[0], chunked[0], atol=1e-6)  # BLAS blocking may round apart


def test_vote_scores_agree_between_backends():
    rng = np.random.default_rng(2)
    bank, q = rng.normal(size=(400, 24)), rng.normal(size=(100, 24))
    labels = rng.integers(0, 5, 400)
    a = knn_scores(CosineIndex(bank, backend="faiss"), labels, q, 5, 10, 0.07)
    b = knn_scores(CosineIndex(bank, backend="torch", device="cpu"), labels, q, 5, 10, 0.07)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_device_choice(monkeypatch):
    assert dev.device() == "cpu" and CosineIndex(np.eye(3)).backend == "faiss"
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with dev.gpu_scope(True):
        assert dev.device() == "cpu"  # asked, but no GPU: the CPU default
        assert CosineIndex(np.eye(3)).backend == "faiss"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert dev.device() == "cuda"
        assert dev.device(gpu=False) == "cpu"


def test_device_matmul_torch_path_equals_numpy(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 20)).astype(np.float32), rng.normal(size=(20, 7)).astype(np.float32)
    np.testing.assert_allclose(dev.matmul(a, b, dev="cpu"), a @ b, rtol=1e-5, atol=1e-5)
    a64 = a.astype(np.float64)
    assert dev.matmul(a64, b, dev="cpu").dtype == np.float64
    assert dev.matmul(a, b) is not None and np.array_equal(dev.matmul(a, b), a @ b)


def test_tracking_propagation_on_the_torch_path(monkeypatch):
    """Label propagation with its similarity matmul forced through torch (as on CUDA) equals
    the numpy path."""
    from patchlens.evaluation import propagation

    rng = np.random.default_rng(4)
    grid, n, C, K = (6, 7), 3, 16, 3
    feats = l2_normalize(rng.normal(size=(n + 1, 42, C)))
    labels = rng.random((n, 42, K)).astype(np.float32)
    ref = propagation.propagate(feats[0], feats[1:], labels, grid, 2, 5, 0.1)
    monkeypatch.setattr(propagation, "matmul", lambda a, b: dev.matmul(a, b, dev="cpu"))
    got = propagation.propagate(feats[0], feats[1:], labels, grid, 2, 5, 0.1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("shape, size", [((7, 9, 5), (50, 61)), ((28, 28, 21), (448, 448))])
def test_torch_upsample_argmax_equals_numpy(shape, size):
    """Few-shot segmentation's class map on the torch path (CUDA when in use) is numpy's
    bilinear upsampling + argmax, up to float32 near-ties."""
    import torch

    from patchlens.evaluation.upsample import (resize_bilinear, upsample_argmax,
                                               upsample_argmax_torch)

    a = np.random.default_rng(0).random(shape, dtype=np.float32)
    up = resize_bilinear(a, size)
    ref = up.argmax(-1)
    got = upsample_argmax_torch(torch.from_numpy(a), size).numpy()
    assert got.shape == size and got.dtype == ref.dtype
    top2 = np.sort(up, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], ref[clear])
    # no GPU in use: numpy's (pixels in doubt mixed one by one), also up to near-ties
    np.testing.assert_array_equal(upsample_argmax(a, size)[clear], ref[clear])
