"""The patch views: PCA colours against numpy's own PCA of the same stored patches, the figure
drawn from the rule's table, the compression's cosine error, and the explorer settings. Inputs
are real feature files written by the extraction (tests/helpers/explorer_inputs.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.explorer_inputs import explorer_inputs  # noqa: E402
from helpers.workflow import dry_run  # noqa: E402

from patchlens.config import load_config  # noqa: E402
from patchlens.data.dataset import Dataset  # noqa: E402
from patchlens.errors import ConfigError  # noqa: E402
from patchlens.features.variants import apply_variant  # noqa: E402
from patchlens.report import tables as T  # noqa: E402
from patchlens.report.explorer import compress, cosine_errors, decode  # noqa: E402
from patchlens.report.figures import FIGURES  # noqa: E402
from patchlens.report.patch_pca import (best_layers, explorer_settings, figure_layers,  # noqa: E402
                                        patch_pca_table, shown_images)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return explorer_inputs(tmp_path_factory.mktemp("views"))


def _stored(path, layer, images):
    """Stored float16 patch tokens read with xarray (not FeatureStore): (n * h * w, C) float64."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ids = [str(i) for i in ds["image"].values]
        li = list(ds["layer"].values).index(layer)
        x = ds["tokens"].values[[ids.index(i) for i in images], li]
    return x.reshape(-1, x.shape[-1]).astype(np.float64)


def _numpy_pca_rgb(x):
    """First three PCs by eigendecomposition of the covariance matrix, min-max scaled."""
    xc = x - x.mean(axis=0)
    w, v = np.linalg.eigh(xc.T @ xc)
    s = xc @ v[:, np.argsort(w)[::-1][:3]]
    return (s - s.min(axis=0)) / (s.max(axis=0) - s.min(axis=0))


def test_patch_pca_table_is_numpys_pca_up_to_sign(inputs):
    ds = Dataset.from_manifest(inputs["manifests"][0])
    images = shown_images(ds.images, 12)[:3]
    models = {m: f for (_, m), f in zip(inputs["pairs"], inputs["features"])}
    best = best_layers(pd.DataFrame({"model": ["tiny"] * 3, "variant": "raw",
                                     "best_layer": [1, 1, 2]}), list(models))
    assert best == {"tiny": 1}
    table = patch_pca_table(models, ds, "photos", images, best)
    assert list(table.columns) == T.TABLE_COLUMNS["patch_pca"]
    pca = table[table["kind"] == "pca"]
    # tiny: 3 blocks + out (layer 3): early 0, middle 1 (= best), out
    assert sorted(pca.loc[pca["model"] == "tiny", "layer"].unique()) == [0, 1, 3]
    checked = 0
    for (m, li), d in pca.groupby(["model", "layer"]):
        ref = _numpy_pca_rgb(_stored(models[m], li, images))
        d = d.sort_values(["image", "row", "col"], key=lambda c: c.map(
            {im: i for i, im in enumerate(images)}) if c.name == "image" else c)
        got = d[["r", "g", "b"]].to_numpy(float)
        for k in range(3):  # a component and its negative give c and 1 - c
            err = min(np.abs(got[:, k] - ref[:, k]).max(), np.abs(got[:, k] - 1 + ref[:, k]).max())
            assert err < 1e-3, (m, li, k, err)
        checked += 1
    assert checked == 4  # tiny 0, 1, 3 and pixels 0
    thumbs = table[table["kind"] == "image"]
    assert sorted(thumbs["image"].unique()) == sorted(images)
    assert thumbs[["r", "g", "b"]].std().min() > 0.05  # real photographs, not blank

    tables = {"patch_pca": table}
    fig = FIGURES["patch_pca"].fn.draw(tables)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(shown) == 2 * 3 * 1 + 3 * 3 + 1 * 3  # per (model, image): image + its layers


def test_figure_layers_early_middle_best_out():
    assert figure_layers(list(range(13)), 12, 9) == [2, 5, 9, 12]
    assert figure_layers(list(range(13)), 12, None) == [2, 5, 12]
    assert figure_layers([0], None, 0) == [0]
    assert figure_layers(list(range(6)), None, 5) == [1, 2, 5]


def test_compression_error_is_the_max_cosine_difference(inputs):
    f = inputs["features"][0]
    x = _stored(f, 2, shown_images(Dataset.from_manifest(inputs["manifests"][0]).images, 4))
    for dims in (4, 64):
        comp = compress(x, dims)
        y = decode(comp).astype(np.float64)
        h = min(comp["dims"], 16)
        assert comp["codes"].dtype == np.int8 and comp["codes"].shape == (len(x), h + 1)
        assert comp["codes4"].shape == (len(x), (comp["dims"] - h + 1) // 2)
        assert y.shape == (len(x), comp["dims"] + 1)
        cos = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (  # noqa: E731
            a / np.linalg.norm(a, axis=1, keepdims=True)).T
        diff = np.abs(cos(y) - cos(x))
        want = diff.max()
        assert cosine_errors(x, comp) == pytest.approx((want, diff.mean()), abs=1e-9)
        if dims == 64:  # 48 channels: all components kept, only the rounding is left
            assert want < 0.1
    # 4 components of 48 channels lose more than int8 rounding
    assert cosine_errors(x, compress(x, 4))[0] > cosine_errors(x, compress(x, 64))[0]


def test_variant_is_applied_before_compression(inputs):
    from patchlens.features.channel_stats import VarianceStats
    from patchlens.features.store import FeatureStore
    from patchlens.report.explorer import variant_features

    images = shown_images(Dataset.from_manifest(inputs["manifests"][0]).images, 3)
    stats = VarianceStats(inputs["variances"][0])
    with FeatureStore(inputs["features"][0]) as store:
        got = variant_features(store, 1, images, "drop1", stats)
    want = apply_variant(_stored(inputs["features"][0], 1, images), "drop1", stats.mean(1),
                         stats.var(1))
    assert got.shape == want.shape == (3 * 24, 47)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_explorer_settings_check_references():
    config = load_config(ROOT / "config" / "demo.yaml")
    s = explorer_settings(config)
    assert s["datasets"] == ["photos"] and s["images"] == 12
    assert s["models"]["photos"] == ["imgfocus_s14", "tiny_vit", "pixels"]  # oracle: scenes only
    assert explorer_settings({**config, "report": {}}) is None
    for entry, key in [({"datasets": ["nope"]}, "report.explorer.datasets"),
                       ({"datasets": ["photos"], "models": ["nope"]}, "report.explorer.models"),
                       ({"datasets": ["photos"], "models": ["oracle"]},
                        "report.explorer.datasets"),
                       ({"datasets": ["photos", "scenes"], "images": ["a"]},
                        "report.explorer.images")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            explorer_settings({**config, "report": {"explorer": entry}})


def test_schema_checks_the_explorer_block():
    from patchlens.config import validate
    config = load_config(ROOT / "config" / "demo.yaml")
    bad = {**config, "report": {"explorer": {"datasets": ["photos"], "dims": 500}}}
    with pytest.raises(ConfigError, match="dims"):
        validate(bad)
    for images in (0, {"a": 0}, {}):
        with pytest.raises(ConfigError, match="images"):
            validate(load_config(ROOT / "config" / "demo.yaml") | {
                "report": {"explorer": {"datasets": ["photos"], "images": images}}})
    validate(load_config(ROOT / "config" / "demo.yaml") | {"report": {"explorer": {
        "datasets": ["photos"], "images": {"a": 3, "b": ["train-animal-chelsea"]}}}})


def test_shown_images_spread_and_checked():
    ids = [f"i{k}" for k in range(30)]
    assert shown_images(ids, 4) == ["i0", "i10", "i19", "i29"]
    assert shown_images(ids[:3], 12) == ids[:3]
    assert shown_images(ids, ["i5", "i2"]) == ["i5", "i2"]
    with pytest.raises(ConfigError, match="report.explorer.images"):
        shown_images(ids, ["x"])


def test_shown_layers_all_or_listed_with_out():
    from patchlens.report.patch_pca import shown_layers
    assert shown_layers([0, 1, 2, 3], "all", 3) == [0, 1, 2, 3]
    assert shown_layers([0, 1, 2, 3], ["out", 1], 3) == [1, 3]
    with pytest.raises(ConfigError, match="report.explorer.layers"):
        shown_layers([0, 1, 2], ["out"], None)  # no final-norm entry stored
    with pytest.raises(ConfigError, match="report.explorer.layers"):
        shown_layers([0, 1, 2], [7], None)


def test_named_image_sets_are_page_entries(inputs):
    """``images: {name: ids or count}`` gives one entry per set (data set: set), each with its
    own images and its own compression."""
    from patchlens.report.explorer_page import explorer_data, explorer_entries

    entries = explorer_entries(inputs["pairs"][:1], inputs["features"][:1],
                               inputs["variances"][:1], inputs["manifests"])
    ids = Dataset.from_manifest(inputs["manifests"][0]).images
    settings = {"images": {"pair": [ids[3], ids[0]], "spread": 3}, "layers": [0], "dims": 8,
                "top_k": 2, "variants": ["raw"]}
    payload, stats = explorer_data(entries, settings, {})
    assert list(payload["datasets"]) == ["photos: pair", "photos: spread"]
    assert [i["id"] for i in payload["datasets"]["photos: pair"]["images"]] == [ids[3], ids[0]]
    assert [i["id"] for i in payload["datasets"]["photos: spread"]["images"]] == \
        shown_images(ids, 3)
    assert stats["max_error"] > 0
    config = load_config(ROOT / "config" / "demo.yaml")
    config["report"] = {"explorer": {"datasets": ["photos", "scenes"], "images": {"a": ["x"]}}}
    with pytest.raises(ConfigError, match=r"report\.explorer\.images"):
        explorer_settings(config)


def test_workflow_stops_on_a_bad_explorer_entry_in_one_line(tmp_path):
    """A data set the explorer cannot show stops the workflow before any job, in one line."""

    import yaml
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["report"]["explorer"]["datasets"] = ["nope"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = dry_run(tmp_path, tmp_path / "config.yaml")
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1
    assert out == ["patchlens: report.explorer.datasets: unknown data set 'nope' "
                   "(have scenes, photos)"]
    assert not (tmp_path / "results").exists()
