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
from patchlens.plan import (BUILD_S_PER_MPARAM, GPU, STARTUP_S, UPSAMPLE_NS, add_hours,
                            feature_bytes, job_resources, model_facts, plan, split_counts,
                            task_cost, task_flop, vit_flop)
from patchlens.plan.hours import REDUCE_NS, SELECT_NS

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


def test_fewshot_flop_is_query_times_support_patches_once_for_every_variant():
    p = {"n_shots": 2, "seeds": [0, 1], "heads": ["knn"], "support_split": "train",
         "query_split": "val", "linear_iters": 0}
    entry = {"source": "voc2012"}
    counts = {"train": 1000, "val": 50}
    # 20 classes x 2 shots = 40 support images of 6 patches; 50 query images of 6 patches
    expect = 2 * (2 * (50 * 6) * (40 * 6) * 8)
    assert task_flop("fewshot_seg", p, counts, entry, (2, 3), 8) == expect
    # raw, zscore and drop{m} share two products (raw and z-scored) of the same pairs; each
    # variant still visits every similarity value once (correction, norms, top-k)
    variants = ["raw", "zscore", "drop1", "drop4", "drop16"]
    cost = task_cost("fewshot_seg", p, counts, entry, (2, 3), 8, variants)
    pairs = 2 * (50 * 6) * (40 * 6)  # two seeds
    assert cost["sim_flop"] == cost["flop"] == 2 * pairs * 2 * 8
    assert cost["select"] == 5 * pairs
    # without zscore one product serves them all; searched one variant at a time, five
    assert task_cost("fewshot_seg", p, counts, entry, (2, 3), 8, ["raw", "drop2"])["flop"] == \
        pairs * 2 * 8
    from patchlens.tasks.fewshot_seg import flop

    p = {**p, "k": 20}
    alone = flop(p, counts, entry, (2, 3), 8, variants, shared_product=False)
    assert alone["flop"] == 5 * pairs * 2 * 8 and alone["select"] == 5 * pairs
    assert flop(p, counts, entry, (2, 3), 8, variants, tensor_cores=False)["sim_flop"] == 0


def test_tracking_scores_masks_on_the_device_when_asked():
    from patchlens.tasks.tracking import DEFAULT_PARAMS, flop

    entry = {"source": "davis2017", "params": {"max_sequences": 2, "max_frames": 4}}
    counts = split_counts(entry)  # 2 videos of 4 frames: frames 1 and 2 are scored
    variants = ["raw", "zscore", "drop2"]
    grid, C = (6, 10), 16
    on = flop(DEFAULT_PARAMS, counts, entry, grid, C, variants)
    # frame t propagates from the first frame and the t - 1 before it (n_last_frames 7); with
    # 6 rows and radius 12 every target patch meets every patch of each context frame
    pairs = 2 * (60 * 1 * 60 + 60 * 2 * 60)
    # raw and drop2 share one product, zscore has its own (VariantAffinity); every variant
    # visits its similarities once (window, top-k)
    assert on["flop"] == on["sim_flop"] == 2 * pairs * 2 * C and on["select"] == 3 * pairs
    alone = flop(DEFAULT_PARAMS, counts, entry, grid, C, variants, shared_product=False)
    assert alone["flop"] == 3 * pairs * 2 * C
    pixels = 3 * 8 * 480 * 854 * (61 / 30 + 1)  # variants x frames x mask x (objects + 1)
    assert on["device_mask_pixels"] == pytest.approx(pixels) and on["launches"] > 0
    off = flop(DEFAULT_PARAMS, counts, entry, grid, C, variants, on_device=False)
    assert off["mask_pixels"] == pytest.approx(pixels) and "device_mask_pixels" not in off
    assert off["launches"] == 0


def test_channel_statistics_are_accumulated_while_extracting():
    cfg = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    now, before = plan(cfg, "/nonexistent"), plan(cfg, "/nonexistent", stats_in_extraction=False)
    written = sum(s["bytes_written"] for s in now["stages"].values())
    read = sum(s["bytes_read"] for s in now["stages"].values())
    assert read <= 1.5 * written  # issue 20: every feature file read about once per task using it
    cv, cv0 = now["stages"]["channel_variance"], before["stages"]["channel_variance"]
    # the rule reads back what the extractor wrote beside the tokens: two float64 per channel
    # and layer, instead of the variance split's tokens
    stats = 0.0
    for (m, d) in {(r["model"], r["dataset"]) for r in now["jobs"]
                   if r["rule"] == "channel_variance"}:
        f = model_facts(cfg["models"][m])
        stats += f["n_layers"] * f["dim"] * 16.0
    assert cv["bytes_read"] == pytest.approx(stats) and cv0["bytes_read"] > 1000 * stats
    # the reduction moved to the extraction jobs, value for value
    moved = sum(r["elements"] for r in now["jobs"] if r["rule"] == "extract_features")
    assert moved == pytest.approx(sum(r["elements"] for r in before["jobs"]
                                      if r["rule"] == "channel_variance"))


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
    sim, select = sum(j["sim_flop"] for j in rows), sum(j["select"] for j in rows)
    assert 0 < probe < fs["flop"] and pixels > 0  # the demo runs both heads
    assert fs["flop"] == pytest.approx(sim + probe) and select > 0
    # each job runs with its t threads at t/8 of the all-core rates (matmul; the linear probe's
    # own; the similarity values' passes, at their all-core ns each); the stage's machine hours
    # are its core-hours over the 8 cores
    job_s = (n * 2.0 + pixels * 3e-9 + select * SELECT_NS * 1e-9 / (t / 8)
             + (fs["flop"] - probe) / (100e9 * t / 8) + probe / (20e9 * t / 8) + io)
    assert fs["hours_cpu"] == pytest.approx(job_s * t / 8 / 3600)
    # on a GPU the upsampling runs there too (its two products per pixel x class), the
    # similarity products on float16 tensor cores, each variant's pass over the similarities
    # at the device's memory rate
    pixel_flop = sum(j["pixel_flop"] for j in rows)
    assert pixel_flop > pixels
    gpu_s = (n * 2.0 + (fs["flop"] - sim + pixel_flop) / 10e12 + sim / (GPU["fp16_tflops"] * 1e12)
             + select * GPU["select_bytes"] / (GPU["mem_gbps"] * 1e9) + io)
    assert fs["hours_gpu"] == pytest.approx(gpu_s / 3600)
    ex = [j for j in r["jobs"] if j["rule"] == "extract_features"][0]
    assert ex["threads"] == demo["extraction"]["threads"] and ex["startup"] == "torch"
    assert ex["mparams"] > 0  # building the model: its weights at the default rate
    assert ex["hours_cpu"] * 3600 == pytest.approx(
        7.0 + ex["mparams"] * BUILD_S_PER_MPARAM + ex["elements"] * REDUCE_NS * 1e-9
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
            + big["select"] * SELECT_NS * 1e-9
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
    # the demo's evaluator jobs are minutes long: nothing to split at the default 24 h
    assert out["cluster"]["cpu"] == {"limit": 1440, "jobs_over": 0, "pieces": 0,
                                     "still_over": []}
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


def test_jobs_longer_than_the_cluster_limit_split_by_layers_then_seeds():
    from patchlens.plan import job_splits, max_runtime

    cfg = validate(yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))
    assert max_runtime(cfg) == 24 * 60  # the schema's default
    # one evaluator job of 12 layers and 3 seeds, only matmul FLOPs and a file read: at 4
    # threads of 30 GFLOP/s its runtime is 2x (start-up + FLOPs / 120 GFLOP/s + bytes / 500 MB/s)
    row = {"rule": "fewshot_seg", "model": "m", "dataset": "d", "threads": 4, "flop": 36 * 3.6e14,
           "bytes_read": 12 * 1e9, "bytes_written": 0.0, "mem_bytes": 0.0, "n_layers": 12,
           "n_seeds": 3}
    result = {"jobs": [row]}

    def minutes(layers, seeds):  # independent of the plan's code: the formula above
        secs = STARTUP_S["python"] + 36 * 3.6e14 * layers / 12 * seeds / 3 / 120e9 + \
            12e9 * layers / 12 / 500e6
        return max(10, math.ceil(2 * secs / 60))

    whole = minutes(12, 3)
    assert job_resources(result, "fewshot_seg", "m", "d")["runtime"] == whole
    assert job_splits(result, "fewshot_seg", "m", "d", whole) == [(list(range(12)), None)]
    for limit in (whole // 2, whole // 5, minutes(1, 3), minutes(1, 2), minutes(1, 1)):
        pieces = job_splits(result, "fewshot_seg", "m", "d", limit)
        # every layer is read by one layer group only; a layer is cut into seed groups only when
        # it does not fit alone; every (layer, seed) is evaluated exactly once
        cells = [(layer, s) for layers, seeds in pieces for layer in layers
                 for s in (seeds if seeds is not None else range(3))]
        assert sorted(cells) == [(layer, s) for layer in range(12) for s in range(3)]
        assert all(minutes(len(lay), len(s) if s else 3) <= limit for lay, s in pieces)
        split_seeds = any(s is not None for _, s in pieces)
        assert split_seeds == (minutes(1, 3) > limit)
        # as few layer groups as fit: one group fewer would not
        if not split_seeds:
            g = len(pieces)
            assert g == 1 or minutes(math.ceil(12 / (g - 1)), 3) > limit


def test_a_task_cost_may_be_one_number_per_layer_and_variant(monkeypatch):
    from types import SimpleNamespace

    import patchlens.tasks.registry as registry

    spec = SimpleNamespace(flop=lambda p, counts, entry, grid, C, variants: 7.0)
    monkeypatch.setattr(registry, "get_task", lambda name: spec)
    assert task_cost("toy", {}, {}, {}, (2, 2), 3, ["raw", "drop1"]) == {"flop": 14.0}
    spec.flop = lambda *args: {"flop": 1.0, "walltime": 5.0}  # not a cost the plan can time
    with pytest.raises(ValueError, match="walltime"):
        task_cost("toy", {}, {}, {}, (2, 2), 3)
