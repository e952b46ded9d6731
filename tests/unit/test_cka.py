"""Linear CKA with the unbiased HSIC estimator: identities, invariances, minibatching, stores."""
import numpy as np
import pytest

from patchlens.analysis.cka import (
    batch_splits, hsic_unbiased, linear_cka, minibatch_cka, minibatch_cka_matrix)
from patchlens.analysis.cka_stores import cka_layers
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


# ----------------------------------------------------------------------------- teaching matters

def _tm_reference(xs, ys):
    """Teaching Matters' cka_main.py on paired minibatches, written out: K = X X^T of the
    flattened tokens, K - min, / max, zero diagonal, unbiased HSIC (Nguyen et al. Eq. 3 with
    ones vectors), averaged over batches; CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    def kern(x):
        k = x @ x.T
        k = k - k.min()
        k = k / k.max()
        np.fill_diagonal(k, 0.0)
        return k

    def hsic(K, L):
        n = len(K)
        one = np.ones((n, 1))
        r = np.trace(K @ L) + (one.T @ K @ one @ one.T @ L @ one).item() / ((n - 1) * (n - 2))
        r -= (one.T @ K @ L @ one).item() * 2 / (n - 2)
        return r / (n * (n - 3))

    kl = kk = ll = 0.0
    for x, y in zip(xs, ys):
        K, L = kern(x), kern(y)
        kl, kk, ll = kl + hsic(K, L), kk + hsic(K, K), ll + hsic(L, L)
    return kl / np.sqrt(kk * ll)


def _ln_store(path, tokens, cls, w, b, eps=1e-6, model="m"):
    from patchlens.features.store import FeatureWriter

    n, L, P, C = tokens.shape
    attrs = {"model": model, "kind": "timm", "ln_eps": eps, "ln_layers": list(range(L))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with FeatureWriter(path, [f"im{i}" for i in range(n)], list(range(L)), (P // 2, 2), C, True,
                       attrs, {"ln_weight": w, "ln_bias": b}) as wr:
        wr.write(tokens, cls)
    return FeatureStore(path)


def test_teaching_matters_mode_normalises_tokens_and_matches_the_reference(tmp_path):
    """Layer 1 = every token of layer 0 scaled and shifted by its own random (a, b): LayerNorm
    undoes that, so in mode teaching_matters CKA(0, 1) = 1, while the residual stream differs.
    Layer 2 is independent noise. Values equal the reference formula on the LayerNorm outputs."""
    from patchlens.analysis.cka import layer_norm

    r = np.random.default_rng(0)
    n, P, C = 12, 8, 16
    x0 = r.normal(size=(n, 1 + P, C))                       # class token + patches
    a = r.uniform(0.5, 3, size=(n, 1 + P, 1))
    shift = r.normal(size=(n, 1 + P, 1)) * 3
    x1 = a * x0 + shift
    x2 = r.normal(size=(n, 1 + P, C))
    allt = np.stack([x0, x1, x2], 1).astype(np.float16).astype(np.float64)   # (n, L, T, C)
    w = r.uniform(0.5, 1.5, size=(3, C)).astype(np.float32)
    w[1] = w[0]
    bias = r.normal(size=(3, C)).astype(np.float32) * 0.1
    bias[1] = bias[0]
    s = _ln_store(tmp_path / "a.h5", allt[:, :, 1:], allt[:, :, 0], w, bias)
    params = {"mode": "teaching_matters", "batch_size": 6, "seed": 1}
    df = cka_layers(s, s, params=params)
    assert set(df.level) == {"tokens_ln"} and (df.n_samples == n).all()
    v = df.set_index(["layer_a", "layer_b"]).value
    assert v[0, 1] == pytest.approx(1.0, abs=1e-5)
    res = cka_layers(s, s, params={"levels": ["image"], "batch_size": 6})
    assert res.set_index(["layer_a", "layer_b"]).value[0, 1] < 0.99   # residual stream differs
    # reference: the same two shuffled minibatches of 6 images, LayerNorm computed here
    order = np.random.default_rng(1).permutation(n)
    feats = [layer_norm(allt[:, l], w[l], bias[l], 1e-6).reshape(n, -1).astype(np.float64)
             for l in range(3)]
    batches = np.array_split(order, 2)
    for la, lb in ((0, 2), (1, 2), (0, 1)):
        ref = _tm_reference([feats[la][i] for i in batches], [feats[lb][i] for i in batches])
        assert v[la, lb] == pytest.approx(ref, abs=2e-4), (la, lb)


def test_teaching_matters_mode_needs_layer_norm_parameters(tmp_path):
    a = _store(tmp_path / "a.h5", np.ones((6, 1, 4, 2)), "a", (2, 2))
    with pytest.raises(DataError, match="ln_weight.*mode: residual"):
        cka_layers(a, a, params={"mode": "teaching_matters"})
    with pytest.raises(ConfigError, match="mode"):
        cka_layers(a, a, params={"mode": "tm"})


def test_unknown_cka_mode_fails_at_config_validation():
    """The config alone shows a bad mode: the schema rejects it before any job runs."""
    from pathlib import Path

    import yaml

    from patchlens.startup import validate

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    validate(dict(cfg, analyses={**cfg["analyses"],
                                 "cka": {"datasets": ["scenes"],
                                         "params": {"mode": "teaching_matters"}}}))
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    cfg["analyses"]["cka"]["params"] = {"mode": "tm"}
    with pytest.raises(ConfigError, match="mode"):
        validate(cfg)
