"""Linear CKA with the unbiased HSIC estimator: identities, invariances, minibatching, stores."""
import numpy as np
import pytest

from patchlens.analysis.cka import (
    batch_splits, cka_layers, hsic_unbiased, linear_cka, minibatch_cka, minibatch_cka_matrix)
from patchlens.errors import ConfigError, DataError
from patchlens.features.store import FeatureStore, write_features


def ortho_group_rvs(d, random_state):
    """A random orthogonal matrix (QR of a Gaussian matrix)."""
    q, _ = np.linalg.qr(np.random.default_rng(random_state).normal(size=(d, d)))
    return q


def _structured(n, seed=0):
    """Two representations sharing an 8-dim latent (one nonlinear), plus noise."""
    r = np.random.default_rng(seed)
    z = r.normal(size=(n, 8))
    x = z @ r.normal(size=(8, 64)) + 2 * r.normal(size=(n, 64))
    y = np.tanh(z @ r.normal(size=(8, 32))) + 0.5 * r.normal(size=(n, 32))
    return x, y


def _hsic_explicit(x, y):
    """Song et al. (2012) Eq. 5 with explicit n x n Gram matrices (independent reference)."""
    n = len(x)
    K, L = x @ x.T, y @ y.T
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ K @ L @ one)) / (n * (n - 3))


def _biased_cka(x, y):
    """Kornblith et al. (2019) biased linear CKA, feature-space form
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.sum((y.T @ x) ** 2) / np.sqrt(np.sum((x.T @ x) ** 2) * np.sum((y.T @ y) ** 2))


def test_feature_space_hsic_equals_explicit_gram_formula():
    x, y = _structured(40)
    x = x + 5.0  # an offset must not matter (the estimator is translation invariant)
    assert hsic_unbiased(x, y) == pytest.approx(_hsic_explicit(x, y), rel=1e-9)
    assert hsic_unbiased(x, x) == pytest.approx(_hsic_explicit(x, x), rel=1e-9)


def test_identity_symmetry_rotation_and_scaling():
    x, y = _structured(500)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    q = ortho_group_rvs(64, random_state=1)
    assert linear_cka(3.7 * x @ q, y) == pytest.approx(linear_cka(x, y), abs=1e-10)
    assert linear_cka(x @ q, x) == pytest.approx(1.0, abs=1e-10)
    sp = batch_splits(500, 128)
    xb = [x[s] for s in sp]
    assert minibatch_cka(xb, xb) == pytest.approx(1.0, abs=1e-12)
    assert minibatch_cka(xb, [0.1 * b @ q for b in xb]) == pytest.approx(1.0, abs=1e-10)


def test_gram_path_matches_feature_space_path():
    # one minibatch = the full-batch estimator; the Gram path multiplies in float32
    x, y = _structured(300, seed=2)
    x = x + 50.0  # a large offset must not cost precision (samples are centred first)
    assert minibatch_cka([x], [y]) == pytest.approx(linear_cka(x, y), rel=1e-5)
    r = np.random.default_rng(4)
    u, v = r.normal(size=(300, 40)), r.normal(size=(300, 40))
    assert minibatch_cka([u], [v]) == pytest.approx(linear_cka(u, v), abs=1e-5)


def test_independent_features_give_near_zero_where_the_biased_estimator_does_not():
    # d/n = 0.1: biased CKA of independent data sits near sqrt(d1 d2)/n = 0.1, the unbiased
    # estimator's spread is about sqrt(2)/n = 7e-4; tolerance 0.01
    r = np.random.default_rng(3)
    x, y = r.normal(size=(2000, 200)), r.normal(size=(2000, 200))
    assert abs(linear_cka(x, y)) < 0.01
    assert _biased_cka(x, y) > 0.05


def test_minibatch_agrees_with_full_batch_on_structured_data():
    # measured |difference| ~ 1e-3 over seeds for n = 4096, batch 256; tolerance 0.01
    x, y = _structured(4096, seed=7)
    full = linear_cka(x, y)
    assert 0.3 < full < 0.95  # real, partial structure
    perm = np.random.default_rng(0).permutation(4096)
    sp = [perm[s] for s in batch_splits(4096, 256)]
    assert len(sp) == 16
    assert minibatch_cka([x[s] for s in sp], [y[s] for s in sp]) == pytest.approx(full, abs=0.01)


def test_matrix_pairs_every_layer_like_the_scalar_estimator():
    r = np.random.default_rng(5)
    # 3 sets of 40 samples; batch 40 = one minibatch per set (HSIC is permutation invariant)
    la = [[r.normal(size=(40, 6)) for _ in range(3)] for _ in range(3)]   # [set][layer]
    lb = [[a[0] @ r.normal(size=(6, 5)) + r.normal(size=(40, 5)), a[2] ** 2] for a in la]
    mat = minibatch_cka_matrix(((iter(a), iter(b)) for a, b in zip(la, lb)), batch_size=40)
    assert mat.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            expect = minibatch_cka([s[i] for s in la], [s[j] for s in lb])
            assert mat[i, j] == pytest.approx(expect, rel=1e-10)
    within = minibatch_cka_matrix(((iter(a), None) for a in la), batch_size=16)
    np.testing.assert_allclose(np.diag(within), 1.0, atol=1e-12)
    np.testing.assert_allclose(within, within.T, atol=1e-12)


def _store(path, tokens, model, grid):
    n = tokens.shape[0]
    write_features(path, tokens, [f"im{i:02d}" for i in range(n)], grid,
                   {"model": model, "patch_size": 16})
    return FeatureStore(path)


def test_cka_layers_on_feature_stores(tmp_path):
    r = np.random.default_rng(0)
    n, g, C = 24, 4, 8
    base = r.normal(size=(n, 1, g * g, C))
    toks = np.concatenate([base, base ** 2, r.normal(size=(n, 1, g * g, C))], axis=1)
    q = ortho_group_rvs(C, random_state=2)
    # model b: rotated + scaled copy of a's layers 0 and 2, on a 2x finer grid (nearest upsampled,
    # which the bilinear resampling to the common 4 x 4 grid undoes exactly)
    fine = (2.0 * toks[:, [0, 2]] @ q).reshape(n, 2, g, g, C)
    fine = fine.repeat(2, axis=2).repeat(2, axis=3).reshape(n, 2, 4 * g * g, C)
    a = _store(tmp_path / "a" / "d.h5", toks, "a", (g, g))
    b = _store(tmp_path / "b" / "d.h5", fine, "b", (2 * g, 2 * g))
    params = {"batch_size": 64, "set_size": 128, "max_patches_per_image": 10}
    df = cka_layers(a, b, params=params)
    assert list(df.columns) == ["model_a", "model_b", "layer_a", "layer_b", "level", "value",
                                "n_samples"]
    assert len(df) == 2 * 3 * 2 and set(df.level) == {"patch", "image"}
    v = df.set_index(["level", "layer_a", "layer_b"]).value
    for level in ("patch", "image"):
        assert v[level, 0, 0] == pytest.approx(1.0, abs=2e-3)   # float16 storage
        assert v[level, 2, 1] == pytest.approx(1.0, abs=2e-3)
        assert abs(v[level, 2, 0]) < 0.3 and abs(v[level, 0, 1]) < 0.3
    assert df.loc[df.level == "patch", "n_samples"].iloc[0] == n * 10
    assert df.loc[df.level == "image", "n_samples"].iloc[0] == n
    pd_again = cka_layers(a, b, params=params)
    np.testing.assert_array_equal(pd_again.value, df.value)  # seeded

    within = cka_layers(a, a, params={**params, "levels": "patch"})
    m = within.pivot(index="layer_a", columns="layer_b", values="value").to_numpy()
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-9)


def test_cka_errors(tmp_path):
    a = _store(tmp_path / "a.h5", np.ones((3, 1, 4, 2)), "a", (2, 2))
    with pytest.raises(DataError, match="at least 4"):
        cka_layers(a, a, params={"levels": ["image"]})
    with pytest.raises(ConfigError, match="levels"):
        cka_layers(a, a, params={"levels": ["pixel"]})
    with pytest.raises(ConfigError, match="batch_size"):
        cka_layers(a, a, params={"batch_size": 0})
