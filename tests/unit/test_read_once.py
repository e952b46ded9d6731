"""Read once: one evaluator job scores every variant from one read of each layer, with the same
scores as evaluating each variant on its own through FeatureStore (the pre-issue-11 path)."""
import numpy as np
import pandas as pd
import pytest

from patchlens.config import task_spec
from patchlens.evaluate import evaluate_all, make_transform
from patchlens.features.store import FeatureStore
from helpers.three_layers import three_layer_study

SCENES = {"seed": 0, "image_size": 64, "patch_align": 16, "rotation": 0, "n_train": 12,
          "n_val": 8, "n_gallery": 8, "n_identities": 8, "n_videos": 2, "n_frames": 4,
          "n_pairs": 4, "n_keypoints": 4, "n_shots_max": 2}
PARAMS = {"fewshot_seg": {"seeds": [0], "n_shots": 2, "linear_iters": 5},
          "lowshot_cls": {"seeds": [0], "n_shots": [1]}, "instance_id": {}, "retrieval": {},
          "tracking": {}, "keypoints": {}}
VARIANTS = ["raw", "drop1", "zscore"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Scenes + a 3-layer feature file (oracle, oracle + noise, noise) + channel statistics."""
    return three_layer_study(tmp_path_factory.mktemp("ro"), SCENES)


def test_layer_view_reads_one_layer_like_the_store(study):
    ds, feats, _, tokens, cls, images = study
    with FeatureStore(feats) as store:
        view = store.layer_view(1)
        order = [images[5], images[0], images[3]]
        np.testing.assert_array_equal(view.tokens(1, order), store.tokens(1, order))
        np.testing.assert_array_equal(view.cls(1), store.cls(1))
        assert view.tokens(1).shape == (len(images), 4, 4, tokens.shape[-1])
        assert view.bytes_read == tokens[:, 1].size * 2 + cls[:, 1].size * 2  # float16 on disk
        with pytest.raises(RuntimeError, match="layer 1 asked for layer 0"):
            view.tokens(0)


def _key(t):
    cols = [c for c in t.columns if c not in ("value", "n_eval", "n_skipped")]
    return t.sort_values(cols).reset_index(drop=True)


@pytest.mark.parametrize("task", list(PARAMS))
def test_every_variant_from_one_read_equals_one_variant_at_a_time(study, tmp_path, task):
    ds, feats, stats, *_ = study
    spec = task_spec(task)
    params = {**spec.defaults, **PARAMS[task]}
    variants = VARIANTS if task in ("fewshot_seg", "lowshot_cls", "instance_id") else ["raw"]
    outs = {v: tmp_path / f"{v}.csv" for v in variants}
    res = evaluate_all(task, params, feats, ds.root, outs, variance=stats,
                       labels={"model": "m", "dataset": "scenes"})
    size = feats.stat().st_size
    assert res["bytes_read"] <= 1.2 * size  # the target, whatever the variant count
    for v in variants:
        with FeatureStore(feats) as store:  # the independent path: every layer, one variant
            ref = spec.run(store, ds, make_transform(v, stats), params)
        got = pd.read_csv(outs[v], keep_default_na=False)
        assert set(got["variant"]) == {v} and set(got["task"]) == {task}
        a, b = _key(got[ref.columns.intersection(got.columns)]), _key(ref)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a["value"].to_numpy(float), b["value"].to_numpy(float),
                                   rtol=1e-6, atol=1e-9)


def test_workflow_has_one_evaluator_job_per_task_model_dataset(tmp_path):
    """Dry run of the e2e config: one fewshot_seg job per (model, data set) writing every
    variant's CSV (same paths as before), and the GPU resource only when gpu: true."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from patchlens.config import ROOT

    text = (ROOT / "tests" / "configs" / "tiny.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text + "\nevaluation: {threads: 3}\n")
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    out = subprocess.run([snakemake, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
                          "--cores", "8", "-n", "--config", "gpu=True"],
                         capture_output=True, text=True, check=True).stdout
    jobs = re.findall(r"rule fewshot_seg:\n(.*?)\n\n", out + "\n\n", re.S)
    assert len(jobs) == 3  # tiny_vit, pixels, oracle on scenes; variants raw + drop1 in each
    for job in jobs:
        model = re.search(r"model=(\w+)", job).group(1)
        assert (f"output: results/scores/fewshot_seg/{model}/scenes/raw.csv, "
                f"results/scores/fewshot_seg/{model}/scenes/drop1.csv") in job
        assert "gpu=1" in job
        # the threads of an evaluator job are evaluation.threads (Snakemake hands them to BLAS,
        # faiss and torch as OMP_NUM_THREADS); its runtime comes from the plan at those threads
        assert re.search(r"threads: 3\b", job), job
