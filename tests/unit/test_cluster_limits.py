"""Jobs a cluster accepts (issue 20, item 5): the dry run of the real study (config.yaml) asks
for no job longer than cluster.max_runtime, on CPU nodes and on GPU nodes, and the SLURM
profile's bundles (group-components) ask for no more either. Offline: only the DAG is built."""
from pathlib import Path

import pytest
import yaml
from helpers.workflow import dry_run, group_jobs, job_runtimes

from patchlens.config import validate
from patchlens.plan import GPU_TFLOPS, max_runtime, parse_piece, plan, split_summary

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
SLURM_PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"


@pytest.mark.parametrize("gpu", [False, True])
def test_no_job_of_the_study_runs_longer_than_max_runtime(tmp_path, gpu):
    cfg = validate(yaml.safe_load(CONFIG.read_text()))
    limit = max_runtime(cfg)
    proc = dry_run(tmp_path, CONFIG, "--config", f"gpu={gpu}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_runtimes(proc.stdout)
    assert len(jobs) > 400  # every job of the study, with its resources
    over = [(r, w, t) for r, w, t in jobs if t > limit]
    assert not over, f"jobs asking for more than max_runtime={limit} min: {over[:5]}"
    # what `patchlens plan` says about the same jobs: as many pieces as the dry run runs
    summary = split_summary(plan(cfg, None), limit, GPU_TFLOPS if gpu else None)
    assert summary["still_over"] == []
    assert sum(r.endswith("_piece") for r, _, _ in jobs) == summary["pieces"]
    if not gpu:  # on CPU nodes the longest few-shot jobs are cut, down to query-image parts
        pieces = [parse_piece(w.split("piece=")[1]) for r, w, _ in jobs
                  if r == "fewshot_seg_piece"]
        assert any(q is not None for _, _, q in pieces)
        assert {"fewshot_seg", "fewshot_seg_piece"} <= {r for r, _, _ in jobs}


@pytest.mark.parametrize("gpu", [False, True])
def test_slurm_bundles_stay_within_max_runtime(tmp_path, gpu):
    """The profile's group-components bundle short jobs only: no bundle's members add up to more
    than max_runtime (so no sbatch asks for more, however its rounds run), and bundles exist."""
    from snakemake.profiles import ProfileConfigFileParser

    with open(SLURM_PROFILE) as f:
        prof = dict(ProfileConfigFileParser().parse(f))
    components = {k: int(v) for k, v in (g.split("=") for g in prof["group-components"])}
    limit = max_runtime(validate(yaml.safe_load(CONFIG.read_text())))
    groups = group_jobs(tmp_path, CONFIG, {"gpu": gpu}, components, int(prof["cores"]))
    assert groups, "no group job: is group-components still in the SLURM profile?"
    assert max(len(g["runtimes"]) for g in groups) > 1  # small jobs still share an sbatch
    for g in groups:
        assert g["runtime"] <= limit and sum(g["runtimes"]) <= limit, (
            f"group {g['group']} of {len(g['runtimes'])} jobs asks for {g['runtime']} min "
            f"(members add up to {sum(g['runtimes'])}), more than max_runtime={limit}")
