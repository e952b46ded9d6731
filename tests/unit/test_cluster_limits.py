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


def still_over(gpu: bool) -> set[tuple[str, str]]:
    """(model, dataset) of the jobs whose smallest piece (one layer, one seed) the plan says is
    still longer than the limit (`patchlens plan` names them)."""
    cfg = validate(yaml.safe_load(CONFIG.read_text()))
    s = split_summary(plan(cfg, None), max_runtime(cfg), GPU_TFLOPS if gpu else None)
    return {(m, d) for _, m, d, _ in s["still_over"]}


@pytest.mark.parametrize("gpu", [False, True])
def test_no_job_of_the_study_runs_longer_than_max_runtime(tmp_path, gpu):
    limit = max_runtime(validate(yaml.safe_load(CONFIG.read_text())))
    proc = dry_run(tmp_path, CONFIG, "--config", f"gpu={gpu}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_runtimes(proc.stdout)
    assert len(jobs) > 400  # every job of the study, with its resources
    rules = {r for r, _, _ in jobs}
    if not gpu:  # on CPU nodes the longest few-shot jobs are cut into pieces and gathered
        assert "fewshot_seg_piece" in rules and "fewshot_seg" in rules
    over = [(r, w, t) for r, w, t in jobs if t > limit]
    known = still_over(gpu)
    # the one exception: pieces of one layer and one seed of the jobs the plan reports as too
    # long even so (patchlens plan: "whose one-layer one-seed piece is still longer")
    rest = [(r, w, t) for r, w, t in over if not (
        r.endswith("_piece") and "_s" in w and any(f"model={m}, dataset={d}," in w + ","
                                                   for m, d in known))]
    assert not rest, f"jobs asking for more than max_runtime={limit} min: {rest[:5]}"
    for r, w, _ in over:  # and they are the smallest pieces there are
        layers, seeds = parse_piece(w.split("piece=")[1])
        assert len(layers) == 1 and len(seeds) == 1, (r, w)


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
