"""The SLURM profile for real: the workflow submitted through a single-node SLURM on this host
(started by slurm_up.sh when none answers, stopped again afterwards) gives the same score table as
the local run. Skipped with the reason where SLURM cannot be started (not root, no apt, no
network...). The profile checks at the bottom need no SLURM and always run."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SLURM_PROFILE = ROOT / "profiles" / "slurm"
LOCAL_PROFILE = ROOT / "profiles" / "local"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
RUN_TIMEOUT = 1200       # s per workflow run; a job SLURM can never place fails sooner (below)
# First status check this long after a submission (the profile keeps the plugin's 40 s, right
# for a busy cluster; here jobs take seconds). MinJobAge=300 in slurm.conf.in keeps it >= 3x.
FIRST_CHECK_S = "5"
SITE_VARS = ("PATCHLENS_SLURM_PARTITION", "PATCHLENS_SLURM_ACCOUNT",
             "PATCHLENS_SLURM_GPU_PARTITION")


def _sh(*cmd, env=None, timeout=30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def _node_ready(env) -> bool:
    proc = _sh("sinfo", "-h", "-o", "%T", env=env, timeout=15)
    return proc.returncode == 0 and bool({"idle", "mixed"} & set(proc.stdout.split()))


@dataclasses.dataclass
class Slurm:
    env: dict
    cpus: int
    mem_mb: int


@pytest.fixture(scope="session")
def slurm():
    """A SLURM that accepts jobs: the one already answering, or one started for this session."""
    env = dict(os.environ)
    started = None
    if not _node_ready(env):
        if shutil.which("bash") is None:
            pytest.skip("no bash to run tests/cluster/slurm_up.sh")
        started = tempfile.mkdtemp(prefix="patchlens-slurm-")
        proc = _sh("bash", str(HERE / "slurm_up.sh"), started, timeout=900)
        if proc.returncode == 77:
            shutil.rmtree(started, ignore_errors=True)
            reason = re.findall(r"SKIP: (.*)", proc.stderr)
            pytest.skip(f"SLURM cannot be started here: {reason[-1] if reason else proc.stderr[-300:]}")
        if proc.returncode != 0:
            _sh("bash", str(HERE / "slurm_down.sh"), started, timeout=120)
            pytest.fail(f"tests/cluster/slurm_up.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        env.update(re.findall(r"^export (\w+)=(.*)$", proc.stdout, re.M))
        for var in SITE_VARS:    # a site's partition/account mean nothing on this test cluster
            env.pop(var, None)
    node = _sh("sinfo", "-h", "-o", "%c %m", env=env).stdout.split()
    try:
        yield Slurm(env=env, cpus=int(node[0]), mem_mb=int(node[1].rstrip("+")))
    finally:
        if started:
            proc = _sh("bash", str(HERE / "slurm_down.sh"), started, timeout=120)
            assert proc.returncode == 0, f"slurm_down.sh failed:\n{proc.stderr[-2000:]}"


def _unplaceable(env) -> str:
    """squeue lines of our jobs that SLURM will never start (more CPUs/memory than any node)."""
    out = _sh("squeue", "-h", "-o", "%i %j %C %m %r", env=env).stdout
    return "\n".join(ln for ln in out.splitlines()
                     if re.search(r"PartitionConfig|ReqNodeNotAvail|Unsatisfiable", ln))


def run_snakemake(workdir: Path, args: list[str], env: dict, watch_slurm: bool = False):
    """Run snakemake in `workdir`; return (seconds, output). Fails with the output tail, or as soon
    as a submitted job can never be placed (the plugin would wait for it forever)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "snakemake.out"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, *args], cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, text=True,
                                env={**env, "PYTHONUNBUFFERED": "1"})
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > RUN_TIMEOUT:
                    raise AssertionError(f"snakemake ran over {RUN_TIMEOUT} s")
                stuck = _unplaceable(env) if watch_slurm else ""
                if stuck:
                    raise AssertionError(f"SLURM can never run these jobs (node too small for "
                                         f"the request?):\n{stuck}")
                time.sleep(2)
        except AssertionError as e:
            proc.kill()
            proc.wait()
            if watch_slurm:
                _sh("scancel", "--name", _run_names(log) or "-", env=env)
            raise AssertionError(f"{e}\n{log.read_text()[-4000:]}") from None
    text = log.read_text()
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{text[-6000:]}"
    return time.monotonic() - t0, text


def _run_names(log: Path) -> str:
    m = re.search(r"SLURM run ID: (\S+)", log.read_text())
    return m[1] if m else ""


def _slurm_args(slurm: Slurm) -> list[str]:
    # --cores caps the CPUs one grouped sbatch asks for: no more than the test node has.
    return ["--workflow-profile", str(SLURM_PROFILE), "--cores", str(min(2, slurm.cpus)),
            "--slurm-init-seconds-before-status-checks", FIRST_CHECK_S]


TWO_RULES = """
rule all:
    input: "a.txt", expand("g{i}.txt", i=range(3))
rule a:
    output: "a.txt"
    threads: 1
    resources: mem_mb=200, runtime=5
    shell: "echo $SLURM_JOB_ID > {output}"
rule g:
    input: "a.txt"
    output: "g{i}.txt"
    group: "evaluate"
    threads: 1
    resources: mem_mb=200, runtime=5
    shell: "echo $SLURM_JOB_ID > {output}"
"""


@pytest.mark.cluster
def test_profile_submits_rules_and_groups(slurm, tmp_path):
    """The profile on a throwaway workflow: every job runs inside a SLURM job, the status command
    sees jobs finish, and the members of group `evaluate` share one sbatch."""
    (tmp_path / "Snakefile").write_text(TWO_RULES)
    seconds, out = run_snakemake(tmp_path, _slurm_args(slurm), slurm.env, watch_slurm=True)
    a = (tmp_path / "a.txt").read_text().strip()
    grouped = {(tmp_path / f"g{i}.txt").read_text().strip() for i in range(3)}
    assert a.isdigit(), f"rule a did not run under SLURM (SLURM_JOB_ID='{a}')\n{out[-3000:]}"
    assert len(grouped) == 1 and grouped != {a} and grouped.pop().isdigit(), (
        f"group members ran in jobs {grouped}, rule a in {a}: expected one shared sbatch")
    print(f"two-rule workflow through SLURM: {seconds:.0f} s")


@pytest.mark.cluster
@pytest.mark.e2e
def test_workflow_through_slurm_equals_local(slurm, tmp_path):
    assert (ROOT / "Snakefile").is_file() and TINY.is_file(), "Snakefile or tiny config missing"
    common = ["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(TINY)]
    t0 = time.monotonic()
    # Both at once: the SLURM run mostly waits on status checks, the local one fills that time.
    with ThreadPoolExecutor(2) as pool:
        slurm_run = pool.submit(run_snakemake, tmp_path / "slurm", [
            *common, "--directory", str(tmp_path / "slurm"), *_slurm_args(slurm)],
            slurm.env, watch_slurm=True)
        local_run = pool.submit(run_snakemake, tmp_path / "local", [
            *common, "--directory", str(tmp_path / "local"),
            "--workflow-profile", str(LOCAL_PROFILE), "--cores", "2"], dict(os.environ))
        (on_slurm, out), (local, _) = slurm_run.result(), local_run.result()
    print(f"tiny workflow: SLURM {on_slurm:.0f} s, local {local:.0f} s (side by side), "
          f"test {time.monotonic() - t0:.0f} s")

    assert "submitted with SLURM jobid" in out
    assert re.search(r"slurm_logs/group_evaluate", out), (
        "no grouped evaluator sbatch: is group-components: evaluate=N still in the profile?")
    a, b = (pd.read_parquet(tmp_path / d / "results" / "tables" / "scores.parquet")
            for d in ("slurm", "local"))
    assert sorted(a.columns) == sorted(b.columns)
    keys = [c for c in sorted(a.columns) if c != "value"]
    a, b = (t[sorted(t.columns)].sort_values(keys).reset_index(drop=True) for t in (a, b))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9)


# --- the profiles as Snakemake reads them (no SLURM needed) --------------------------------------

def read_profile(profile: Path, env: dict | None = None) -> dict:
    """The profile as Snakemake parses it (YTE templating and all), under `env`."""
    from snakemake.profiles import ProfileConfigFileParser

    saved = dict(os.environ)
    try:
        os.environ.update(env or {})
        with open(profile / "config.yaml") as f:
            return dict(ProfileConfigFileParser().parse(f))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _rules_text() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]
                     if p.is_file())


def test_slurm_profile_settings_exist_in_plugin():
    """Every slurm-* key is a setting of the installed plugin (a renamed option would otherwise
    only show up on a cluster), and the status command is one the plugin accepts."""
    from snakemake_executor_plugin_slurm import ExecutorSettings

    fields = {f.name for f in dataclasses.fields(ExecutorSettings)}
    prof = read_profile(SLURM_PROFILE, {v: "" for v in SITE_VARS})
    assert prof["executor"] == "slurm"
    for key in prof:
        if key.startswith("slurm-"):
            assert key[len("slurm-"):].replace("-", "_") in fields, f"plugin has no --{key}"
    assert prof["slurm-status-command"] == "squeue"
    assert prof["rerun-incomplete"] == "True" and int(prof["latency-wait"]) >= 30
    assert int(prof["cores"]) >= 1, "cores caps the CPUs of one grouped sbatch: keep it"
    assert "default-resources" in prof and not any(
        r.startswith(("slurm_partition", "slurm_account")) for r in prof["default-resources"])


def test_slurm_profile_site_variables():
    prof = read_profile(SLURM_PROFILE, {"PATCHLENS_SLURM_PARTITION": "cpu",
                                        "PATCHLENS_SLURM_ACCOUNT": "proj",
                                        "PATCHLENS_SLURM_GPU_PARTITION": "gpu"})
    assert {"slurm_partition=cpu", "slurm_account=proj"} <= set(prof["default-resources"])
    gpu_rules = {r.split(":")[0] for r in prof["set-resources"]}
    assert all(r.endswith(":slurm_partition=gpu") for r in prof["set-resources"])
    text = _rules_text()
    if text:    # Snakemake ignores set-resources of unknown rules silently: check the names
        from patchlens.config import TASKS  # rules/tasks.smk generates two rules per task
        generated = {*TASKS, *(f"{t}_piece" for t in TASKS)}
        missing = [r for r in gpu_rules if r not in generated
                   and not re.search(rf"(?m)^(?:rule|use rule .* as) {r}\b", text)]
        assert not missing, f"profiles/slurm sets the GPU partition of unknown rules {missing}"


def test_group_in_profile_matches_rules():
    groups = {g.split("=")[0] for g in read_profile(SLURM_PROFILE)["group-components"]}
    text = _rules_text()
    assert text, "no rules found under rules/"
    used = set(re.findall(r"(?m)^\s+group:\s*\n?\s*[\"'](\w+)[\"']", text))
    assert used <= groups, f"rules use groups {used - groups} the slurm profile does not batch"


def test_local_profile():
    prof = read_profile(LOCAL_PROFILE)
    assert prof["cores"] == "all" and prof["rerun-incomplete"] == "True"
    assert "executor" not in prof
    assert "gpu=1" in prof["resources"]
