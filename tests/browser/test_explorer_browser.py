"""The patch explorer in a real browser (headless Chromium over the DevTools pipe of
test_report_browser.py): the page is built by the explorer rule's own functions from real feature
files (extraction + channel statistics, tests/helpers/explorer_inputs.py); a real mouse click on a
patch gives similarities equal to numpy's cosine similarities of the same stored features after
the same compression, and within the page's stated error of the uncompressed ones; moving the
layer slider or changing the variant gives the map of that layer / variant; the second model
answers the same click; screenshots are not blank.

Set PATCHLENS_EXPLORER=/path/to/results/report/explorer.html to also open an existing page (the
demo's) and save its screenshot to PATCHLENS_SCREENSHOT_DIR.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_report_browser", HERE / "test_report_browser.py")
RB = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RB)

pytestmark = [pytest.mark.browser, RB.needs_chromium]

SETTINGS = {"images": 6, "layers": "all", "dims": 32, "top_k": 5,
            "variants": ["raw", "zscore", "drop1"]}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from helpers.explorer_inputs import explorer_inputs

    from patchlens.report.explorer_page import explorer_entries, write_explorer

    tmp = tmp_path_factory.mktemp("explorer")
    inp = explorer_inputs(tmp / "results")
    entries = explorer_entries(inp["pairs"], inp["features"], inp["variances"],
                               inp["manifests"])
    out = tmp / "results" / "report" / "explorer.html"
    stats = write_explorer(entries, SETTINGS, {"tiny": "tiny ViT"}, out,
                           out.with_suffix(".json"))
    return {"html": out, "stats": stats, "inputs": inp, "entries": entries}


@pytest.fixture(scope="module")
def browser(page, tmp_path_factory):
    shots = tmp_path_factory.mktemp("shots")
    b = RB.Chromium(RB.CHROMIUM, shots / "profile", shots / "chromium.log")
    b.open(page["html"].resolve().as_uri())
    b.shots = shots
    yield b
    b.close()


def expected_sims(page, model, variant, layer, image, row, col):
    """numpy: the stored features of the shown images after ``variant``, compressed as the rule
    does, cosine similarity of patch (image, row, col) with every patch; and the same without
    compression."""
    from patchlens.data.dataset import Dataset
    from patchlens.features.channel_stats import VarianceStats
    from patchlens.features.store import FeatureStore
    from patchlens.report.explorer import compress, decode, variant_features
    from patchlens.report.patch_pca import shown_images

    feat, var = page["entries"]["photos"]["models"][model]
    images = shown_images(Dataset.from_manifest(page["inputs"]["manifests"][0]).images,
                          SETTINGS["images"])
    with FeatureStore(feat) as store:
        x = variant_features(store, layer, images, variant, VarianceStats(var)).astype(np.float64)
        h, w = store.grid
    q = (image * h + row) * w + col

    def cos(a):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return a @ a[q]

    return cos(decode(compress(x, SETTINGS["dims"])).astype(np.float64)), cos(x)


def pca_reference(page, model, variant, layer):
    """numpy: first three principal components (eigenvectors of the covariance) of the stored
    features of the shown images after ``variant``, each min-max scaled: (N, 3)."""
    from patchlens.data.dataset import Dataset
    from patchlens.features.channel_stats import VarianceStats
    from patchlens.features.store import FeatureStore
    from patchlens.report.explorer import variant_features
    from patchlens.report.patch_pca import shown_images

    feat, var = page["entries"]["photos"]["models"][model]
    images = shown_images(Dataset.from_manifest(page["inputs"]["manifests"][0]).images,
                          SETTINGS["images"])
    with FeatureStore(feat) as store:
        x = variant_features(store, layer, images, variant, VarianceStats(var)).astype(np.float64)
    xc = x - x.mean(axis=0)
    w, v = np.linalg.eigh(xc.T @ xc)
    s = xc @ v[:, np.argsort(w)[::-1][:3]]
    return (s - s.min(axis=0)) / (s.max(axis=0) - s.min(axis=0))


def click(browser, panel, image, u, v):
    """A real left click at the relative position (u, v) of an image of a panel."""
    r = browser.evaluate(f"(() => {{ const c = document.querySelectorAll('#panel{panel} canvas')"
                         f"[{image}].getBoundingClientRect(); "
                         "return [c.left, c.top, c.width, c.height]; })()")
    x, y = r[0] + u * r[2], r[1] + v * r[3]
    for kind in ("mousePressed", "mouseReleased"):
        browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                  "button": "left", "clickCount": 1})


def result(browser, panel):
    return browser.evaluate(f"patchExplorer.result({panel})")


def set_control(browser, selector, value, event):
    browser.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                     f"e.value = {json.dumps(str(value))}; "
                     f"e.dispatchEvent(new Event({json.dumps(event)})); }})()")


def not_blank(path):
    from PIL import Image, ImageStat
    with Image.open(path) as im:
        return max(ImageStat.Stat(im.convert("L")).stddev) > 5


def test_click_gives_numpys_cosine_of_the_compressed_features(page, browser):
    assert browser.evaluate("patchExplorer.ready()")
    ids = browser.evaluate("patchExplorer.data.datasets.photos.images.map(i => i.id)")
    assert len(ids) == SETTINGS["images"]
    # image 2, the patch at row 1, col 4 of tiny's 4 x 6 grid (centre of the cell)
    click(browser, 0, 2, (4 + 0.5) / 6, (1 + 0.5) / 4)
    r = result(browser, 0)
    assert (r["model"], r["variant"], r["layer"], r["image"], r["row"], r["col"]) == (
        "tiny", "raw", 0, 2, 1, 4)
    comp, exact = expected_sims(page, "tiny", "raw", 0, 2, 1, 4)
    got = np.array(r["sims"])
    assert np.abs(got - comp).max() < 1e-5
    stated = float(browser.evaluate("document.getElementById('max-error').textContent"))
    assert stated == pytest.approx(page["stats"]["max_error"], abs=1e-4)
    assert np.abs(got - exact).max() <= stated + 1e-4
    # the outlined patches are the k most similar others
    order = [i for i in np.argsort(-comp, kind="stable") if i != r["query"]]
    assert sorted(r["topk"]) == sorted(order[:SETTINGS["top_k"]])
    # the second model (pixels) answers the same position
    r1 = result(browser, 1)
    assert (r1["model"], r1["image"], r1["row"], r1["col"]) == ("pixels", 2, 1, 4)
    comp1, _ = expected_sims(page, "pixels", "raw", 0, 2, 1, 4)
    assert np.abs(np.array(r1["sims"]) - comp1).max() < 1e-5
    shot = browser.screenshot(browser.shots / "explorer_click.png", height=900)
    assert not_blank(shot)
    assert not browser.problems(), browser.problems()


def test_layer_and_variant_switch_the_map(page, browser):
    click(browser, 0, 0, (1 + 0.5) / 6, (2 + 0.5) / 4)
    before = np.array(result(browser, 0)["sims"])
    set_control(browser, "#panel0 input.layer", 3, "input")  # the final-norm entry
    r = result(browser, 0)
    assert r["layer"] == 3 and r["layer_name"] == "out"
    comp, _ = expected_sims(page, "tiny", "raw", 3, 0, 2, 1)
    got = np.array(r["sims"])
    assert np.abs(got - comp).max() < 1e-5 and np.abs(got - before).max() > 1e-3
    set_control(browser, "#variant", "drop1", "change")
    r = result(browser, 0)
    comp_v, _ = expected_sims(page, "tiny", "drop1", 3, 0, 2, 1)
    assert r["variant"] == "drop1"
    assert np.abs(np.array(r["sims"]) - comp_v).max() < 1e-5
    assert np.abs(np.array(r["sims"]) - got).max() > 1e-3
    set_control(browser, "#view", "pca", "change")
    r = result(browser, 0)
    assert (r["view"], r["variant"], r["layer"]) == ("pca", "drop1", 3)
    # the PCA view is numpy's PCA of the same stored features after the variant (up to sign
    # and the int8 rounding of the first three scores)
    ref = pca_reference(page, "tiny", "drop1", 3)
    got = np.array(r["rgb"]).reshape(-1, 3)
    for k in range(3):
        err = min(np.abs(got[:, k] - ref[:, k]).max(), np.abs(got[:, k] - 1 + ref[:, k]).max())
        assert err < 0.02, (k, err)
    shot = browser.screenshot(browser.shots / "explorer_pca.png", height=900)
    assert not_blank(shot)
    set_control(browser, "#view", "sim", "change")
    set_control(browser, "#variant", "raw", "change")
    assert not browser.problems(), browser.problems()


def test_page_is_self_contained(page):
    text = page["html"].read_text()
    assert "<script src" not in text and "http://" not in text and "https://" not in text
    assert page["stats"]["bytes"] == page["html"].stat().st_size


def test_existing_explorer_page(tmp_path):
    path = os.environ.get("PATCHLENS_EXPLORER")
    if not path:
        pytest.skip("set PATCHLENS_EXPLORER=/path/to/results/report/explorer.html to check it")
    b = RB.Chromium(RB.CHROMIUM, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        b.open(Path(path).resolve().as_uri())
        assert b.evaluate("patchExplorer.ready()")
        click(b, 0, 0, 0.45, 0.35)
        assert len(result(b, 0)["sims"]) > 0
        shot = b.screenshot(tmp_path / "explorer_demo.png", height=900)
        assert not_blank(shot) and not b.problems(), b.problems()
    finally:
        b.close()
    keep = os.environ.get("PATCHLENS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
