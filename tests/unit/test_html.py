"""The HTML report: self-contained, sections follow the data, tables and config are right."""
import base64
import html
import importlib.util
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from patchlens import __version__
from patchlens.report import figures as F
from patchlens.report import tables as T
from patchlens.report.html import SCREEN_SCALE, write_report

_spec = importlib.util.spec_from_file_location("_synthetic_tables_for_html",
                                               Path(__file__).with_name("test_figures.py"))
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

CONFIG = {"models": {"dino": {"timm": "vit_small_patch16_224.dino", "family": "contrastive"}},
          "tasks": {"fewshot_seg": {"shots": 1, "k": 20, "temperature": 0.07}},
          "note": "a <script>alert(1)</script> & more"}
# shaped as patchlens.report.provenance.collect_provenance returns it
PROV = {"patchlens_version": __version__, "python": "3.11.7",
        "feature files": {
            "dino / scenes": {"source": "timm:vit_small_patch16_224.dino", "weights": "",
                              "sha256": "ab" * 32, "input": "224x224"},
            "mae / scenes": {"source": "https://example.org/mae.pth", "weights": "",
                             "sha256": "cd" * 32, "input": "224x224"}},
        "data sets": {"scenes": {"source": "scenes", "manifest_sha256": "ef" * 32}},
        "snakemake": "9.27.1"}


class Page(HTMLParser):
    """Tags with attributes, <pre> text, section ids, bold table cells."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.pre, self.sections, self.bold, self._in = [], [], [], [], []
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id"))
        self._in.append((tag, a))

    def handle_endtag(self, tag):
        while self._in and self._in.pop()[0] != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)
        if self._in and self._in[-1][0] == "pre":
            self.pre.append(data)
        if any(t == "td" and "best" in a.get("class", "") for t, a in self._in):
            self.bold.append(data)


def fake_figures(figures_dir, names):
    figures_dir.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.new("RGB", (660 + 720 * (i % 2), 300), (i * 20, 100, 200)).save(
            figures_dir / f"{n}.png")
    return figures_dir


@pytest.fixture(scope="module")
def tables_dir(tmp_path_factory):
    return syn.synthetic_tables(tmp_path_factory.mktemp("h") / "tables")


def test_self_contained_page(tables_dir, tmp_path):
    names = ["best_layer", "fewshot_seg", "tracking", "cka_patch"]
    figs = fake_figures(tmp_path / "figures", names)
    out = write_report(tables_dir, figs, tmp_path / "report" / "index.html", CONFIG, PROV)
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) == len(names)
    for a, n in zip(imgs, names):
        prefix = "data:image/png;base64,"
        assert a["src"].startswith(prefix)
        assert base64.b64decode(a["src"][len(prefix):]) == (figs / f"{n}.png").read_bytes()
        with Image.open(figs / f"{n}.png") as im:
            assert int(a["width"]) == round(im.size[0] * SCREEN_SCALE)
    # nothing is fetched: no script, stylesheet link, frame or non-anchor link
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]
    hrefs = [a["href"] for t, a in page.tags if "href" in a]
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert {h[1:] for h in hrefs} == set(page.sections)
    assert "<script>alert" not in text  # config text is escaped
    # captions of the catalogue go with their figures
    assert F.FIGURES["tracking"].caption in html.unescape(text)
    assert not list(out.parent.glob(".*.tmp"))


def test_sections_follow_data(tables_dir, tmp_path):
    tabs = T.load_tables(tables_dir)
    sparse = tmp_path / "tables"
    sparse.mkdir()
    tabs["scores"].query("task == 'fewshot_seg'").to_parquet(sparse / "scores.parquet")
    tabs["models"].to_csv(sparse / "models.csv", index=False)
    figs = fake_figures(tmp_path / "figures", ["fewshot_seg"])
    page = Page(write_report(sparse, figs, tmp_path / "i.html", {}, {}).read_text())
    assert page.sections == ["fewshot_seg", "config", "provenance"]


def test_summary_values_config_and_provenance(tables_dir, tmp_path):
    figs = fake_figures(tmp_path / "figures", [])
    text = write_report(tables_dir, figs, tmp_path / "i.html", CONFIG, PROV).read_text()
    page = Page(text)
    assert yaml.safe_load(html.unescape("".join(page.pre))) == CONFIG
    body = " ".join(page.text)
    for item in ("ab" * 32, "cd" * 32, "ef" * 32, "https://example.org/mae.pth", "9.27.1",
                 __version__, "vit_small_patch16_224.dino"):
        assert item in body, item
    # the bold cell of the k-NN row is the best model's best layer, seed-mean score
    ov = T.overall(T.load_tables(tables_dir)["scores"])
    raw = ov[(ov.task == "fewshot_seg") & (ov.metric == "miou_knn") & (ov.variant == "raw")]
    best = raw.loc[raw["value"].idxmax()]
    bold = [t.strip() for t in page.bold]
    pairs = list(zip(bold[:-1], bold[1:]))
    assert (f"{best['value']:.3f}", f"L{int(best['layer'])}") in pairs
    # every task with scores has its section and summary
    assert {"fewshot_seg", "instance_id", "retrieval", "tracking", "keypoints",
            "lowshot_cls"} <= set(page.sections)


def test_deterministic_and_empty(tmp_path):
    figs = fake_figures(tmp_path / "figures", [])
    a = write_report(tmp_path / "none", figs, tmp_path / "a.html", CONFIG, PROV).read_bytes()
    b = write_report(tmp_path / "none", figs, tmp_path / "b.html", CONFIG, PROV).read_bytes()
    assert a == b
    assert Page(a.decode()).sections == ["config", "provenance"]


def test_report_modules_do_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, patchlens.report.html, patchlens.report.figures, "
            "patchlens.report.tables; print(sorted({'torch', 'timm'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_provenance_lists_models_feature_files_and_data_sets(tables_dir, tmp_path):
    from patchlens.report.html import provenance_html
    models = T.load_tables(tables_dir)["models"]
    out = Page(provenance_html(PROV, models))
    text = " ".join(out.text)
    # the models table is models.csv (config sources); the feature files table is the
    # provenance of each file (its own source and weights checksum), each shown once
    for source in models["source"]:
        assert str(source) in text
    assert "https://example.org/mae.pth" in text
    assert text.count("ab" * 32) == 1 and text.count("ef" * 32) == 1
    assert ["Models", "Feature files", "Data sets", "Other"] == [
        t.strip() for t in out.text if t.strip() in ("Models", "Feature files", "Data sets",
                                                     "Other")]


def test_real_tables_labels_and_out_layer(tmp_path_factory, tmp_path):
    """On the real producers' tables: labels head the summary, the best-layer table says 'out'
    for the final-norm entry, and drop{m}/variants are flagged as chosen on the evaluation
    split."""
    from helpers.real_scores import real_tables_dir
    tables_dir = real_tables_dir(tmp_path_factory)
    figs = fake_figures(tmp_path / "figures", [])
    page = Page(write_report(tables_dir, figs, tmp_path / "i.html", {}, {}).read_text())
    body = " ".join(page.text)
    assert "Deep (noisy oracle)" in body
    assert "evaluation split" in body
    best = T.load_tables(tables_dir)["best_layer"]
    n_out = int((best["best_layer"] == best["n_layers"]).sum())
    assert n_out > 0
    assert sum(t.strip() == "out" for t in page.text) >= n_out
