"""One similarity product for every variant (patchlens.evaluation.similarity) against a float64
reference that transforms the features first (apply_variant), normalises them and multiplies:
same scores to 1e-6, same neighbours up to float ties; both backends (torch on the CPU)."""
import numpy as np
import pytest

from patchlens.evaluation.knn import CosineIndex
from patchlens.evaluation.similarity import VariantIndex, plan_families, topk_by_variant
from patchlens.features.variants import apply_variant, variant_spec

VARIANTS = ["raw", "zscore", "drop1", "drop2", "drop4", "drop8", "drop16"]


def features(rng, n, c, loud=()):
    """Low-rank structure plus noise; ``loud`` channels 100x larger (MAE-like: they carry most
    of the norm and the largest variance)."""
    x = rng.standard_normal((n, 6)) @ rng.standard_normal((6, c)) + rng.standard_normal((n, c))
    x[:, list(loud)] *= 100.0
    return x.astype(np.float16).astype(np.float32)  # stored float16, read as float32


def reference(bank, queries, variant, mean, var, k):
    """float64: transform, L2-normalise, multiply, sort."""
    b = apply_variant(bank.astype(np.float64), variant, mean, var)
    q = apply_variant(queries.astype(np.float64), variant, mean, var)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    sims = q @ b.T
    return sims, -np.sort(-sims, axis=1)[:, :k]


def check(found, sims_ref, top_ref, tol=1e-6):
    vals, idx = found
    assert vals.shape == top_ref.shape and idx.shape == top_ref.shape
    np.testing.assert_allclose(vals, top_ref, atol=tol, rtol=0)
    # every neighbour returned is a true top-k neighbour up to ties: its reference similarity is
    # the score reported for it, and no index repeats
    np.testing.assert_allclose(np.take_along_axis(sims_ref, idx, 1), vals, atol=tol, rtol=0)
    assert all(len(set(r)) == len(r) for r in idx.tolist())


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("loud", [(), (3, 17, 40, 41, 90)])
def test_every_variant_equals_transforming_first(backend, loud):
    rng = np.random.default_rng(len(loud))
    c = 96
    bank, queries = features(rng, 700, c, loud), features(rng, 230, c, loud)
    mean, var = bank.astype(np.float64).mean(0), bank.astype(np.float64).var(0)
    specs = {v: variant_spec(v, mean, var) for v in VARIANTS}
    # small chunks (torch) and small tiles (faiss, with partial last tiles): several blocks of
    # rows and columns, each served by every variant
    index = VariantIndex(bank, specs, "cpu", backend, chunk_bytes=4 * 700 * 64, tile=(64, 96))
    found = index.search(queries, 10)
    assert set(found) == set(VARIANTS)
    for v in VARIANTS:
        sims_ref, top_ref = reference(bank, queries, v, mean, var, 10)
        check(found[v], sims_ref, top_ref)


def test_two_products_serve_seven_variants():
    rng = np.random.default_rng(0)
    var = rng.random(32)
    specs = {v: variant_spec(v, np.zeros(32), var) for v in VARIANTS}
    fams = plan_families(specs, 32)
    assert len(fams) == 2
    chain = next(f for f in fams if f.zscore is None)
    # blocks: the channels kept by drop16, then the ones each smaller m releases, down to raw
    assert [len(b) for b, _ in chain.steps] == [16, 8, 4, 2, 1, 1]
    assert [n for _, n in chain.steps] == [["drop16"], ["drop8"], ["drop4"], ["drop2"],
                                           ["drop1"], ["raw"]]
    assert sorted(np.concatenate([b for b, _ in chain.steps]).tolist()) == list(range(32))
    assert set(chain.steps[-1][0].tolist()) == set(np.argsort(var)[-1:].tolist())


def test_unnested_drop_sets_get_their_own_product():
    var_a, var_b = np.arange(8.0), np.arange(8.0)[::-1].copy()
    specs = {"a": variant_spec("drop2", np.zeros(8), var_a),
             "b": variant_spec("drop1", np.zeros(8), var_b)}
    assert len(plan_families(specs, 8)) == 2
    rng = np.random.default_rng(1)
    bank, q = features(rng, 50, 8), features(rng, 9, 8)
    found = topk_by_variant(bank, q, 5, specs)
    for name, (v, var) in {"a": ("drop2", var_a), "b": ("drop1", var_b)}.items():
        sims_ref, top_ref = reference(bank, q, v, np.zeros(8), var, 5)
        check(found[name], sims_ref, top_ref)


def test_raw_matches_cosine_index_and_k_is_capped():
    rng = np.random.default_rng(2)
    bank, q = features(rng, 12, 16), features(rng, 7, 16)
    found = topk_by_variant(bank, q, 50, {"raw": variant_spec("raw")})
    sims, idx = CosineIndex(bank, backend="faiss", device="cpu").search(q, 50)
    assert found["raw"][0].shape == (7, 12)
    np.testing.assert_allclose(found["raw"][0], sims, atol=1e-6)


def test_half_bank_on_the_torch_backend_keeps_float32_products():
    """half=True (the CUDA setting) on the CPU: float16 inputs, float32 products and norms."""
    rng = np.random.default_rng(3)
    c = 64
    bank, q = features(rng, 300, c, (5,)), features(rng, 40, c, (5,))
    mean, var = bank.astype(np.float64).mean(0), bank.astype(np.float64).var(0)
    specs = {v: variant_spec(v, mean, var) for v in ("raw", "drop1", "drop4")}
    found = VariantIndex(bank, specs, "cpu", "torch", half=True).search(q, 8)
    for v in specs:  # the features are float16 values already: nothing is lost
        check(found[v], *reference(bank, q, v, mean, var, 8))


def test_split_half_product_of_zscore_features():
    """zscore features are not float16 values: with half=True they are multiplied as float16
    hi + lo parts (three products); scores stay within 1e-6 of the float64 reference."""
    rng = np.random.default_rng(4)
    c = 64
    bank, q = features(rng, 300, c, (7, 9)), features(rng, 40, c, (7, 9))
    mean, var = bank.astype(np.float64).mean(0), bank.astype(np.float64).var(0)
    specs = {"zscore": variant_spec("zscore", mean, var)}
    found = VariantIndex(bank, specs, "cpu", "torch", half=True).search(q, 8)
    check(found["zscore"], *reference(bank, q, "zscore", mean, var, 8))


@pytest.mark.parametrize("threads", ["1", "3"])
def test_cpu_tiles_and_threads_give_the_one_block_result(monkeypatch, threads):
    """The CPU pass over (rows, cols) tiles on several workers returns the same neighbours and
    the same float32 scores as one block covering everything (the heaps see each row's values
    in the same column order); an empty query set gives empty results."""
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    rng = np.random.default_rng(5)
    c = 48
    bank, q = features(rng, 500, c, (2, 9)), features(rng, 101, c, (2, 9))
    mean, var = bank.astype(np.float64).mean(0), bank.astype(np.float64).var(0)
    specs = {v: variant_spec(v, mean, var) for v in VARIANTS}
    whole = VariantIndex(bank, specs, tile=(101, 500)).search(q, 7)
    tiled = VariantIndex(bank, specs, tile=(16, 37))
    found = tiled.search(q, 7)
    for v in VARIANTS:
        np.testing.assert_array_equal(found[v][1], whole[v][1])
        np.testing.assert_allclose(found[v][0], whole[v][0], rtol=1e-6, atol=1e-7)
    empty = tiled.search(q[:0], 7)
    assert all(a.shape == (0, 7) and b.shape == (0, 7) for a, b in empty.values())


def test_product_is_added_in_place_and_rows_split_evenly():
    """The chain's block products are added to the running product (BLAS, beta = 1), equal to
    adding a separate product; the per-variant passes' row slices cover every row once."""
    from patchlens.device import row_slices
    from patchlens.evaluation.similarity import add_product

    rng = np.random.default_rng(0)
    g = rng.standard_normal((7, 11), dtype=np.float32)
    a, bt = (rng.standard_normal(s, dtype=np.float32) for s in ((7, 3), (3, 11)))
    want = g.astype(np.float64) + a.astype(np.float64) @ bt
    add_product(g, a, bt)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    for n, parts in ((10, 3), (2, 4), (1, 1), (0, 2)):
        rows = np.concatenate([np.arange(0)] + [np.arange(n)[s] for s in row_slices(n, parts)])
        assert np.array_equal(rows, np.arange(n))
