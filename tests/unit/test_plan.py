"""The cost model (patchlens.plan) against independent counts: torch's FLOP counter on a real
timm forward pass, the bytes of a real feature file, a prepared manifest, the CLI's JSON."""
import copy
import json
import math

import pytest
import timm
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from patchlens.cli import main
from patchlens.config import ROOT, validate
from patchlens.data.dataset import Dataset
from patchlens.features.extract import extract
from patchlens.models.resolve import resolve_model
from patchlens.plan import (BUILD_S_PER_MPARAM, STARTUP_S, UPSAMPLE_NS, add_hours,
                            feature_bytes, job_resources, model_facts, plan, split_counts,
                            task_flop, vit_flop)

TINY = {"timm": "vit_tiny_patch16_224", "pretrained": False,
        "kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3}}


@pytest.fixture
def demo():
    return validate(yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))


@pytest.mark.parametrize("grid", [(3, 4), (7, 7)])
def test_vit_flop_matches_torch_flop_counter(grid):
    f = model_facts(TINY)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True,
                          **TINY["kwargs"]).eval()
    for blk in m.blocks:  # explicit q @ k^T and attn @ v: the counter misses the fused CPU kernel
        blk.attn.fused_attn = False
    x = torch.zeros(1, 3, grid[0] * 16, grid[1] * 16)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m.forward_features(x)
    counted = counter.get_total_flops()
    # the counter sees every matmul; the plan omits none of them (norms/softmax are not matmuls)
    assert vit_flop(f, grid) == pytest.approx(counted, rel=1e-6)


def test_layers_count_the_final_norm_and_a_layer_list():
    assert model_facts(TINY)["n_layers"] == 3 + 1  # vit has a final norm: layer n_blocks
    assert model_facts({**TINY, "layers": [0, 2]})["n_layers"] == 2
    nonorm = {**TINY, "kwargs": {**TINY["kwargs"], "final_norm": False}}
    assert model_facts(nonorm)["n_layers"] == 3
    assert model_facts({"baseline": "pixels", "patch_size": 8})["dim"] == 192


def test_feature_bytes_equal_a_real_feature_file(tmp_path, image_dataset):
    spec = resolve_model("tiny", TINY)
    out = tmp_path / "f.h5"
    extract(spec, Dataset(image_dataset), out, img_size=[48, 64], batch_size=4, progress=False)
    import h5py

    with h5py.File(out) as fh:
        stored = sum(fh[v].size * fh[v].dtype.itemsize for v in ("tokens", "cls"))
        n_layers = fh["tokens"].shape[1]
    f = {**model_facts(TINY), "n_layers": n_layers}
    assert feature_bytes(f, 4, (3, 4)) == stored


def test_split_counts_prefer_a_prepared_manifest(image_dataset):
    entry = {"source": "voc2012", "params": {"max_images": 100}}
    assert split_counts(entry) == {"train": 100, "val": 100}
    assert split_counts({"source": "voc2012"}) == {"train": 1464, "val": 1449}
    assert split_counts(entry, image_dataset / "manifest.csv") == {"train": 2, "val": 2}
    davis = split_counts({"source": "davis2017", "params": {"max_sequences": 3, "max_frames": 10}})
    assert davis == {"video": 30}


def test_fewshot_flop_is_query_times_support_patches():
    p = {"n_shots": 2, "seeds": [0, 1], "heads": ["knn"], "support_split": "train",
         "query_split": "val", "linear_iters": 0}
    entry = {"source": "voc2012"}
    counts = {"train": 1000, "val": 50}
    # 20 classes x 2 shots = 40 support images of 6 patches; 50 query images of 6 patches
    expect = 2 * (2 * (50 * 6) * (40 * 6) * 8)
    assert task_flop("fewshot_seg", p, counts, entry, (2, 3), 8) == expect


def test_plan_of_the_demo_counts_jobs_and_disk(demo):
    r = plan(demo, "/nonexistent")
    s = r["stages"]
    # imgfocus_s14, tiny_vit, pixels, oracle on scenes; the three image models on photos
    assert s["extract_features"]["jobs"] == 7
    # one evaluator job per (task, model, dataset): every variant from one read
    assert s["fewshot_seg"]["jobs"] == 4 and s["tracking"]["jobs"] == 4
    assert r["disk_bytes"] >= sum(r["features"].values())
    assert s["extract_features"]["bytes_written"] == pytest.approx(sum(r["features"].values()))
    # CKA reads every model's features of a data set at once: with temp() they must all coexist
    cka_scenes = copy.deepcopy(demo)
    cka_scenes["analyses"] = {"cka": {**demo["analyses"]["cka"], "datasets": ["scenes"]}}
    r1 = plan(cka_scenes, "/nonexistent")
    scenes = sum(b for (m, d), b in r1["features"].items() if d == "scenes")
    assert scenes <= r1["disk_bytes_temp"] <= r1["disk_bytes"]
    no_cka = copy.deepcopy(demo)
    del no_cka["analyses"]["cka"]
    r2 = plan(no_cka, "/nonexistent")
    small = r2["disk_bytes"] - sum(r2["features"].values())
    assert r2["disk_bytes_temp"] == pytest.approx(max(r2["features"].values()) + small)
    startup = {"python": 2.0, "torch": 7.0}
    add_hours(r, cpu_gflops=100.0, read_mbps=1000.0, gpu_tflops=10.0, disk_gbps=1.0, cores=8,
              startup_s=startup, render_s_per_mpix=0.5, lbfgs_gflops=20.0, upsample_ns=3.0)
    fs = s["fewshot_seg"]
    n, t = fs["jobs"], demo["evaluation"]["threads"]
    io = (fs["bytes_read"] + fs["bytes_written"]) / 1e9
    rows = [j for j in r["jobs"] if j["rule"] == "fewshot_seg"]
    probe, pixels = sum(j["probe_flop"] for j in rows), sum(j["pixels"] for j in rows)
    assert 0 < probe < fs["flop"] and pixels > 0  # the demo runs both heads
    # each job runs with its t threads at t/8 of the all-core rates (matmul; the linear probe's
    # own); the stage's machine hours are its core-hours over the 8 cores
    job_s = (n * 2.0 + pixels * 3e-9 + (fs["flop"] - probe) / (100e9 * t / 8)
             + probe / (20e9 * t / 8) + io)
    assert fs["hours_cpu"] == pytest.approx(job_s * t / 8 / 3600)
    # on a GPU the upsampling runs there too: its two products per pixel x class
    pixel_flop = sum(j["pixel_flop"] for j in rows)
    assert pixel_flop > pixels
    assert fs["hours_gpu"] == pytest.approx((n * 2.0 + (fs["flop"] + pixel_flop) / 10e12 + io)
                                            / 3600)
    ex = [j for j in r["jobs"] if j["rule"] == "extract_features"][0]
    assert ex["threads"] == demo["extraction"]["threads"] and ex["startup"] == "torch"
    assert ex["mparams"] > 0  # building the model: its weights at the default rate
    assert ex["hours_cpu"] * 3600 == pytest.approx(
        7.0 + ex["mparams"] * BUILD_S_PER_MPARAM
        + ex["flop"] / (100e9 * min(ex["threads"], 8) / 8)
        + (ex["bytes_read"] + ex["bytes_written"]) / 1e9)
    # scenes are generated: start-up + megapixels x the render rate + the images written
    prep = [j for j in r["jobs"] if j["rule"] == "prepare_dataset" and j["dataset"] == "scenes"][0]
    from patchlens.data.scenes import resolve_params

    side = resolve_params(demo["datasets"]["scenes"]["params"])["image_size"]
    n_img = sum(split_counts(demo["datasets"]["scenes"]).values())
    assert prep["render_mpix"] == pytest.approx(n_img * side * side / 1e6)
    assert prep["hours_cpu"] * 3600 == pytest.approx(
        2.0 + 0.5 * prep["render_mpix"] + prep["bytes_written"] / 1e9)
    res = job_resources(r, "extract_features", "tiny_vit", "scenes")
    assert res["mem_mb"] >= 2000 and res["runtime"] >= 10
    # the runtime a cluster job asks for: 2x its seconds with its own threads at 30 GFLOP/s each
    big = max((j for j in r["jobs"] if j["rule"] == "fewshot_seg"), key=lambda j: j["flop"])
    big = {**big, "flop": 1e16}
    one = {"stages": r["stages"], "jobs": [big]}
    big["probe_flop"] = 0.0
    secs = (STARTUP_S["python"] + big["pixels"] * UPSAMPLE_NS * 1e-9
            + 1e16 / (30e9 * big["threads"]) + (big["bytes_read"] + big["bytes_written"]) / 500e6)
    assert job_resources(one, "fewshot_seg", big["model"], big["dataset"])["runtime"] == \
        math.ceil(2 * secs / 60)


def test_cli_json_shape(tmp_path, capsys):
    cfg = ROOT / "config" / "demo.yaml"
    assert main(["plan", str(cfg), "--json", "--cpu-gflops", "50", "--read-mbps", "500",
                 "--results", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["stages"]["extract_features"]) >= {"jobs", "flop", "bytes_written",
                                                      "bytes_read", "hours_cpu", "hours_gpu"}
    assert out["disk_bytes"] > 0 and out["disk_bytes_temp"] > 0
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err


def test_disk_check_names_need_free_and_the_largest_files(demo, tmp_path):
    from patchlens.errors import ConfigError
    from patchlens.plan import check_disk

    r = plan(demo, tmp_path)
    need = sum(r["features"].values())
    assert check_disk(r, tmp_path, free=need + 1)["need"] == need
    with pytest.raises(ConfigError) as err:
        check_disk(r, tmp_path, free=need - 1)
    msg = str(err.value)
    (m, d), _ = max(r["features"].items(), key=lambda kv: kv[1])  # the largest contributor
    assert "\n" not in msg and "disk_check=False" in msg and f"{m}/{d}" in msg
    # a feature file already on disk needs no new space
    (tmp_path / "features" / "pixels").mkdir(parents=True)
    (tmp_path / "features" / "pixels" / "scenes.h5").write_bytes(b"")
    assert check_disk(r, tmp_path, free=need)["need"] == need - r["features"][("pixels", "scenes")]
