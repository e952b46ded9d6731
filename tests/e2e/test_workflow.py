"""The workflow end to end on the tiny config, in a temporary directory: it completes with the
right values (best layer recomputed from the scores, the attention sample stratified, model labels
in the tables and the report), a second run has nothing to do, and a changed task parameter,
label, family or offset-head threshold reruns only the jobs it reaches."""
import contextlib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from patchlens.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
pytestmark = pytest.mark.e2e


def snakemake(workdir, *args, check=True):
    cmd = SNAKEMAKE + ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
                       "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def planned_jobs(proc) -> dict:
    """rule -> count from a dry run's job table."""
    text = proc.stdout + proc.stderr
    table = re.search(r"Job stats:\n(.*?)\n\n", text, re.S)
    if table is None:
        return {}
    rows = [ln.split() for ln in table.group(1).splitlines()[2:]]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[0] != "total"}


TINY_LABEL = "Tiny ViT (random init)"
ATTENTION_SAMPLE = {"split": ["train"], "max_images": 6, "seed": 0}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The tiny config, with a model label and an attention sample smaller than its split."""
    wd = tmp_path_factory.mktemp("wf")
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["models"]["tiny_vit"]["label"] = TINY_LABEL
    cfg["analyses"]["attention"]["params"] = dict(ATTENTION_SAMPLE)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(wd)
    return wd


@contextlib.contextmanager
def edited_config(workdir, edit):
    """config.yaml changed by ``edit(cfg)`` inside the block, restored after it."""
    path = workdir / "config.yaml"
    original = path.read_text()
    cfg = yaml.safe_load(original)
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


def test_workflow_completes_with_every_output(workdir):
    scores = pd.read_parquet(workdir / "results" / "tables" / "scores.parquet")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    assert set(scores["task"]) == set(config["tasks"])
    assert set(scores["model"]) == set(config["models"])
    assert scores["value"].notna().all()
    # the oracle is the ceiling of every task: at its best layer it is at least as good as
    # every other model on each task's headline metric (raw features, task-level rows)
    task_level = scores[(scores.variant == "raw") & scores.sequence.isin(["", "all"])
                        & scores.scale_bin.isin(["", "all"])]
    for task in config["tasks"]:
        metric = get_task(task).headline
        rows = task_level[(task_level.task == task) & (task_level.metric == metric)]
        assert len(rows), (task, metric)  # the registered headline metric is what the task writes
        best = rows.groupby(["model", "layer"])["value"].mean().groupby("model").max()
        assert best["oracle"] >= best.drop("oracle").max(), (task, best.to_dict())
    assert (workdir / "results" / "report" / "index.html").stat().st_size > 1000
    assert any((workdir / "results" / "figures").glob("*.png"))
    assert (workdir / "results" / "tables" / "best_layer.csv").exists()


def test_best_layer_table_recomputed_from_scores(workdir):
    """best_layer.csv equals a plain recomputation from scores.parquet: overall rows only, seed
    mean per layer, max over layers (ties: shallower), value at the last block, one row per
    key."""
    tables = workdir / "results" / "tables"
    scores = pd.read_parquet(tables / "scores.parquet")
    got = pd.read_csv(tables / "best_layer.csv", keep_default_na=False)
    keys = ["model", "dataset", "task", "variant", "metric", "shots", "feature", "head"]
    overall = scores["sequence"].isin(["", "all"]) & scores["scale_bin"].isin(["", "all"])
    if "category" in scores:
        overall &= scores["category"].isin(["", "all"])
    errors = {"rmse", "absrel", "log10"}  # the depth errors: the smallest is the best
    rows = []
    for key, g in scores[overall].groupby(keys):
        per_layer = g.groupby("layer")["value"].mean()
        n_blocks = int(g["n_layers"].iloc[0])
        sign = -1.0 if key[keys.index("metric")] in errors else 1.0
        # ties (means equal up to summation order, rtol 1e-9 / atol 1e-12): the shallower layer
        signed = sign * per_layer
        best_layer = int(per_layer[np.isclose(signed, signed.max(), rtol=1e-9,
                                              atol=1e-12)].index.min())
        rows.append(dict(zip(keys, key), best_value=per_layer[best_layer], best_layer=best_layer,
                         last_value=per_layer.get(n_blocks - 1, np.nan), sign=sign,
                         n_seeds=g.loc[g["layer"] == best_layer, "seed"].nunique()))
    want = pd.DataFrame(rows)
    want["gap"] = want["sign"] * (want["best_value"] - want["last_value"])
    assert len(got) == len(want) and not got.duplicated(keys).any()
    got["feature"], got["head"] = got["feature"].astype(str), got["head"].astype(str)
    m = got.merge(want, on=keys, suffixes=("", "_want"), validate="one_to_one")
    assert len(m) == len(want)
    assert (m["best_layer"] == m["best_layer_want"]).all()
    assert (m["n_seeds"] == m["n_seeds_want"]).all()
    for c in ("best_value", "last_value", "gap"):
        np.testing.assert_allclose(m[c].astype(float), m[f"{c}_want"], atol=1e-9, err_msg=c)
    deep = m[m["model"] == "tiny_vit"]
    assert (deep["last_layer"] == 2).all() and (deep["n_layers"] == 3).all()


def test_attention_sample_is_seeded_and_stratified(workdir):
    """The attention statistics are over max_images images of the configured split, each
    primary label getting its share (floor or ceiling of max_images x its frequency)."""
    res = workdir / "results"
    with h5py.File(res / "attention" / "tiny_vit" / "scenes.h5", "r") as f:
        used = [x.decode() if isinstance(x, bytes) else str(x) for x in f["image"][()]]
        assert np.asarray(f.attrs["n_images"]).item() == len(used)
    manifest = pd.read_csv(res / "data" / "scenes" / "manifest.csv", dtype={"labels": str},
                           keep_default_na=False).set_index("image")
    pool = manifest[manifest["split"] == "train"]
    n = ATTENTION_SAMPLE["max_images"]
    assert len(used) == n == len(set(used)) and set(used) <= set(pool.index)
    primary = pool["labels"].str.split().str[0]
    share = primary.value_counts() / len(pool) * n
    counts = Counter(primary[used])
    for label, expected in share.items():
        assert np.floor(expected) <= counts.get(label, 0) <= np.ceil(expected), (label, counts)
    assert used == [i for i in pool.index if i in set(used)]  # kept in manifest order


def test_model_labels_and_families_reach_tables_and_report(workdir):
    res = workdir / "results"
    models = pd.read_csv(res / "tables" / "models.csv").set_index("model")
    assert models["label"].to_dict() == {"tiny_vit": TINY_LABEL, "pixels": "pixels",
                                         "oracle": "oracle"}
    # baselines default to the grey 'baseline' family; the scores carry the same family
    assert models["family"].to_dict() == {"tiny_vit": "test", "pixels": "baseline",
                                          "oracle": "baseline"}
    scores = pd.read_parquet(res / "tables" / "scores.parquet")
    assert scores.groupby("model")["family"].first().to_dict() == models["family"].to_dict()
    html = (res / "report" / "index.html").read_text()
    assert TINY_LABEL in html


PRESENTATION_ONLY = {"collect_scores", "best_layer", "paired", "attention_tables", "variance_table",
                     "cka_table", "figures", "report", "all", "patch_pca", "explorer"}


@pytest.mark.parametrize("what, edit, must", [
    ("relabel", lambda c: c["models"]["tiny_vit"].update(label="Renamed ViT"),
     {"collect_scores", "figures", "report", "explorer"}),
    ("explorer top_k", lambda c: c["report"]["explorer"].update(top_k=3), {"explorer", "report"}),
    ("recolour", lambda c: c["models"]["tiny_vit"].update(family="mim"),
     {"collect_scores", "figures", "report"}),
    ("baseline family", lambda c: c["models"]["pixels"].update(family="supervised"),
     {"collect_scores", "figures", "report"}),
    ("offset_heads", lambda c: c["analyses"]["attention"]["params"].update(
        offset_heads={"min_share": 0.2}), {"attention_tables", "figures", "report"}),
    # where weights and downloads are cached, and the batch size, change no output
    ("caches and batch size", lambda c: c.update(weights_dir="elsewhere/weights",
                                                 data_dir="elsewhere/data",
                                                 extraction={**c["extraction"], "batch_size": 3}),
     {"report"}),
])
def test_presentation_edits_plan_only_tables_figures_report(workdir, what, edit, must):
    with edited_config(workdir, edit):
        jobs = planned_jobs(snakemake(workdir, "--dry-run"))
    assert must <= set(jobs) <= PRESENTATION_ONLY, (what, jobs)


def test_explorer_page_and_patch_pca_figure(workdir):
    """The explorer rule's page (self-contained, its error stated) and the PCA figure, linked
    from the report (their values: tests/unit/test_patch_views.py, tests/browser)."""
    import json
    res = workdir / "results"
    stats = json.loads((res / "report" / "explorer.json").read_text())
    page = (res / "report" / "explorer.html").read_text()
    assert stats["bytes"] == len(page.encode()) and 0 <= stats["max_error"] < 1
    assert f'<b id="max-error">{stats["max_error"]:.4f}</b>' in page and TINY_LABEL in page
    assert 'href="explorer.html"' in (res / "report" / "index.html").read_text()
    table = pd.read_parquet(res / "tables" / "patch_pca.parquet")
    assert set(table.loc[table["kind"] == "pca", "model"]) == {"tiny_vit", "pixels", "oracle"}
    assert (res / "figures" / "patch_pca.png").exists()


def test_second_run_has_nothing_to_do(workdir):
    proc = snakemake(workdir, "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_changed_task_parameter_reruns_only_that_task(workdir):
    with edited_config(workdir, lambda c: c["tasks"]["fewshot_seg"].setdefault(
            "params", {}).update(k=7)):
        jobs = planned_jobs(snakemake(workdir, "--dry-run"))
    assert jobs.get("fewshot_seg", 0) > 0, jobs
    allowed = {"fewshot_seg", "collect_scores", "best_layer", "paired", "figures", "report", "all",
               "patch_pca"}  # the PCA figure shows the best layer
    assert set(jobs) <= allowed, jobs
    assert "extract_features" not in jobs and "channel_variance" not in jobs


def test_snakemake_report_has_every_figure_with_caption(workdir):
    snakemake(workdir, "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text()
    drawn = sorted(p.stem for p in (workdir / "results" / "figures").glob("*.png"))
    captions = {p.stem: p.read_text().split()[:6] for p in (ROOT / "report" / "captions").glob("*.rst")}
    for name in drawn:
        assert " ".join(captions[name]) in html, name


def test_workflow_report_in_browser(workdir):
    """The demo-style report of this run, opened in headless Chromium (tests/browser)."""
    env = {**os.environ, "PATCHLENS_REPORT": str(workdir / "results" / "report" / "index.html")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "browser" / "test_report_browser.py")
                           + "::test_existing_report_in_browser"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if "1 skipped" in proc.stdout:
        pytest.skip(proc.stdout.strip().splitlines()[-2])
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]


def test_final_norm_layer_present_for_timm_absent_for_baselines(workdir):
    """The feature file of tiny_vit holds layer n_blocks = timm's forward_features (final norm
    applied, prefix tokens dropped) within float16 tolerance; the baselines have no such entry,
    and every task scored the norm layer of tiny_vit."""
    import numpy as np
    import timm
    import torch

    from patchlens.data.dataset import Dataset
    from patchlens.features.extract import load_batch
    from patchlens.features.store import FeatureStore

    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    entry = cfg["models"]["tiny_vit"]
    depth = entry["kwargs"]["depth"]
    res = workdir / "results"
    with FeatureStore(res / "features" / "tiny_vit" / "scenes.h5") as s:
        assert s.layers == list(range(depth + 1)) and s.norm_layer == depth
        assert s.attrs["norm_layer"] == depth and s.attrs["final_norm"] == 1
        images = s.images[:4]
        got, got_cls = s.tokens(depth, images), s.cls(depth, images)
        size = tuple(s.attrs["input_size"])
        mean, std = s.attrs["mean"], s.attrs["std"]
    torch.manual_seed(int(entry.get("seed", 0)))
    model = timm.create_model(entry["timm"], pretrained=False, num_classes=0,
                              dynamic_img_size=True, **entry["kwargs"]).eval()
    x = torch.from_numpy(load_batch(Dataset(res / "data" / "scenes"), images, size, mean, std))
    with torch.no_grad():
        ref = model.forward_features(x)
    prefix = model.num_prefix_tokens
    np.testing.assert_allclose(got.reshape(len(images), -1, got.shape[-1]),
                               ref[:, prefix:].numpy(), rtol=5e-3, atol=5e-3)
    np.testing.assert_allclose(got_cls, ref[:, 0].numpy(), rtol=5e-3, atol=5e-3)
    for base in ("pixels", "oracle"):
        with FeatureStore(res / "features" / base / "scenes.h5") as s:
            assert s.layers == [0] and s.norm_layer is None
    scores = pd.read_parquet(res / "tables" / "scores.parquet")
    tiny = scores[scores.model == "tiny_vit"]
    assert set(tiny.loc[tiny.layer == depth, "task"]) == set(cfg["tasks"])


def test_keypoints_all_row_is_the_mean_of_the_category_rows(workdir):
    scores = pd.read_parquet(workdir / "results" / "tables" / "scores.parquet")
    kp = scores[scores.task == "keypoints"]
    assert {"pck@0.01", "pck@0.05", "pck@0.1"} <= set(kp.metric)
    keys = ["model", "dataset", "variant", "layer", "seed", "metric"]
    cats = kp[kp.category != "all"]
    assert cats.category.nunique() >= 2          # the scenes pairs span several classes
    mean = {}
    for k, g in cats.groupby(keys):
        mean[k] = sum(g.value) / len(g)          # unweighted over categories
    overall = kp[kp.category == "all"].set_index(keys).value
    assert len(overall) == len(mean)
    for k, v in mean.items():
        assert abs(overall[k] - v) < 1e-9, k


def test_a_job_cut_into_pieces_gathers_into_the_same_files(workdir):
    """The piece rule (rules/tasks.smk, fewshot_seg_piece: here each layer in two parts of its
    query images) run by Snakemake, and its pieces gathered as the task's rule gathers them
    (scripts/evaluate.py: gather_pieces), give byte for byte the files of the whole job."""
    import shutil

    from patchlens.config import load_config, task_variants
    from patchlens.evaluate import gather_pieces
    from patchlens.features.store import FeatureStore
    from patchlens.plan import parse_piece

    res, task, model = workdir / "results", "fewshot_seg", "tiny_vit"
    with FeatureStore(res / "features" / model / "scenes.h5") as store:
        n_layers = len(store.layers)
    pieces = [f"l{i}-{i}_q{q}of2" for i in range(n_layers) for q in range(2)]
    cfg = load_config(workdir / "config.yaml")
    variants = task_variants(cfg, task)
    base = Path("results") / "pieces" / task / model / "scenes"
    files = {kind: {v: [str(base / p / kind / f"{v}.parquet") for p in pieces] for v in variants}
             for kind in ("piece_scores", "piece_units")}
    try:
        snakemake(workdir, *files["piece_scores"][variants[0]])
        out = workdir / "gathered"
        out.mkdir()
        gather_pieces(task, {v: [workdir / p for p in ps]
                             for v, ps in files["piece_scores"].items()},
                      {v: [workdir / p for p in ps] for v, ps in files["piece_units"].items()},
                      {v: out / f"{v}.csv" for v in variants},
                      {v: out / f"{v}.parquet" for v in variants},
                      {"model": model, "dataset": "scenes"}, cfg["statistics"],
                      [tuple(parse_piece(p)[0]) for p in pieces])
        for v in variants:
            whole = res / "scores" / task / model / "scenes" / f"{v}.csv"
            assert (out / f"{v}.csv").read_text() == whole.read_text(), v
            pd.testing.assert_frame_equal(
                pd.read_parquet(out / f"{v}.parquet"),
                pd.read_parquet(res / "units" / task / model / "scenes" / f"{v}.parquet"),
                check_exact=True)
    finally:
        shutil.rmtree(workdir / "results" / "pieces", ignore_errors=True)
        shutil.rmtree(workdir / "gathered", ignore_errors=True)
