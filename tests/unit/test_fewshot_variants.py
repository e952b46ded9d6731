"""Few-shot segmentation of every variant in one call (run_variants: one similarity product for
raw and the drop{m}, one for zscore, labels prepared once) against scoring each variant alone on
features transformed first (the evaluator's per-variant contract), on the CPU (faiss backend)
and on the torch path of the device (run on the CPU as ``cpu:0``)."""
import numpy as np
import pytest

from patchlens.evaluate import VariantSpecs, score_layers
from patchlens.features.channel_stats import write_stats
from patchlens.features.variants import apply_variant, variant_spec
from patchlens.tasks import fewshot_seg
from patchlens.tasks.registry import get_task
from test_fewshot_seg import build, params

VARIANTS = ["raw", "zscore", "drop1", "drop2", "drop4"]


def loud_store(store, factor=100.0):
    """MAE-like features: three channels of large variance carry most of the norm."""
    orig = store.tokens

    def tokens(layer, images=None):
        x = orig(layer, images)
        x[..., -3:] = x[..., -3:] * factor + np.random.default_rng(len(x)).normal(
            0, factor, x[..., -3:].shape)
        return x.astype(np.float16).astype(np.float32)

    store.tokens = tokens
    return store


def stats_of(store, ds, layer):
    x = store.tokens(layer, ds.split("train")).reshape(-1, store.channels).astype(np.float64)
    return x.mean(0), x.var(0)


@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_all_variants_in_one_call_equal_one_at_a_time(tmp_path, device):
    ds, store = build(tmp_path)
    loud_store(store)
    p = params(seeds=[0, 1])
    for layer in (0, 1):
        mean, var = stats_of(store, ds, layer)
        specs = {v: variant_spec(v, mean, var) for v in VARIANTS}
        units = {v: [] for v in VARIANTS}
        joint = fewshot_seg.run_variants(store, ds, specs, p, layers=[layer], units=units,
                                         device=device)
        # on the random layer, the loud channels left by raw / drop1 / drop2 make every cosine
        # about +-1: near-ties at float32 rounding decide the neighbours, and two float32 paths
        # may break them differently (tests/unit/test_similarity.py checks those against float64)
        # drop4 on the oracle layer also drops a one-hot class channel: those patches become
        # zero vectors, tied with every support patch, and the top-k breaks the tie by position
        # (faiss and torch differently); the device path is checked where no such tie exists
        check = (VARIANTS if device == "cpu" else ["raw", "zscore", "drop1", "drop2"]) \
            if layer == 0 else ["zscore", "drop4"]
        for v in check:
            alone = fewshot_seg.run(store, ds,
                                    lambda layer, x, v=v: apply_variant(x, v, mean, var), p,
                                    layers=[layer], units=(u := []))
            assert list(joint[v]["metric"]) == list(alone["metric"])
            if device == "cpu":  # the same arithmetic up to float32 rounding: the same pixels
                np.testing.assert_allclose(joint[v]["value"], alone["value"], atol=1e-6,
                                           err_msg=f"{v} {layer}")
                for a, b in zip(units[v], u):
                    np.testing.assert_array_equal(a[["tp", "fp", "fn"]].to_numpy(),
                                                  b[["tp", "fp", "fn"]].to_numpy())
            else:  # torch's top-k and einsum break the one-hot oracle's exact ties their own
                # way: a few pixels on class boundaries (under 0.1% of them) may flip
                for a, b in zip(units[v], u):
                    ta, tb = a["tp"].to_numpy(), b["tp"].to_numpy()
                    assert np.abs(ta - tb).sum() <= 1e-3 * (tb.sum() + 1), (v, layer)
                np.testing.assert_allclose(joint[v]["value"], alone["value"], atol=1e-3)


def test_dropping_the_loud_channels_recovers_the_oracle(tmp_path):
    ds, store = build(tmp_path)
    loud_store(store)
    mean, var = stats_of(store, ds, 0)
    specs = {v: variant_spec(v, mean, var) for v in ("raw", "drop3")}
    out = fewshot_seg.run_variants(store, ds, specs, params(seeds=[0], heads=["knn"]),
                                   layers=[0])
    assert out["raw"].value.iloc[0] < 0.6 and out["drop3"].value.iloc[0] >= 0.99


def test_evaluator_hands_variant_specs_to_run_variants(tmp_path):
    ds, store = build(tmp_path)
    layers = store.layers
    mean = np.stack([stats_of(store, ds, li)[0] for li in layers])
    var = np.stack([stats_of(store, ds, li)[1] for li in layers])
    write_stats(tmp_path / "var.h5", layers, mean, var, {})
    spec = get_task("fewshot_seg")
    assert spec.run_variants is fewshot_seg.run_variants
    p = params(seeds=[0])
    tables, units, _ = score_layers(spec, store, ds, VariantSpecs(VARIANTS, tmp_path / "var.h5"),
                                    p)
    for v in VARIANTS:
        ref = [fewshot_seg.run(store, ds, lambda layer, x, v=v: apply_variant(
            x, v, mean[li], var[li]), p, layers=[layer]) for li, layer in enumerate(layers)]
        np.testing.assert_allclose(tables[v]["value"],
                                   np.concatenate([r["value"] for r in ref]), atol=1e-6)
        assert len(units[v]) == 2 * len(layers)  # one record set per (layer, head)


def test_linear_probes_fit_the_selected_patches_bit_for_bit():
    """seed_heads applies a VariantSpec to the selected support patches only (drop{m} indexes
    channels, so the result is made C-ordered as a selection is): each linear probe is
    bit-for-bit the fit on the whole array transformed, then selected (the scores of earlier
    runs do not move)."""
    from patchlens.evaluation.probes import LinearProbe
    from patchlens.evaluation.seg_heads import seed_heads

    rng = np.random.default_rng(0)
    tok = rng.standard_normal((20, 6, 6, 24)).astype(np.float16).astype(np.float32)
    lab = rng.integers(-1, 4, (20, 6, 6))
    rows = np.arange(0, 20, 2)
    keep = lab[rows] >= 0

    def select(a):
        return a[rows][keep]

    flat = tok.reshape(-1, 24).astype(np.float64)
    specs = {v: variant_spec(v, flat.mean(0), flat.var(0)) for v in VARIANTS}
    p = {**params(), "heads": ["linear"], "linear_iters": 15}
    heads = seed_heads(3, tok, select, lab[rows][keep], specs, p, "cpu")
    q = rng.standard_normal((2, 6, 6, 24)).astype(np.float32)
    y = lab[rows][keep]
    assert set(np.unique(y)) == {0, 1, 2, 3}  # compact labels: the classes as drawn
    for v, spec in specs.items():
        want = LinearProbe.fit(select(spec.apply(tok)), y, 4, p["linear_weight_decay"], 15)
        qv = spec.apply(q)
        got = heads[v]["linear"][1](q)[v]
        np.testing.assert_array_equal(got, want.logits(qv.reshape(-1, qv.shape[-1])))
