"""The workflow's dry run on a config, as a user starts it (``snakemake --dry-run``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dry_run(directory: Path, configfile: Path, *extra: str) -> subprocess.CompletedProcess:
    """``snakemake --dry-run`` of this repository's Snakefile in ``directory`` on ``configfile``
    (one core, ``extra`` arguments appended); the finished process, output as text."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(directory), "--configfile", str(configfile),
         "--cores", "1", "--dry-run", *extra],
        capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def job_runtimes(out: str) -> list[tuple[str, str, int]]:
    """(rule, wildcards, runtime minutes) of every job a ``--dry-run`` output lists."""
    jobs, rule, wildcards = [], None, ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("rule ") and line.endswith(":"):
            rule, wildcards = line[5:-1], ""
        elif line.startswith("wildcards:"):
            wildcards = line[len("wildcards:"):].strip()
        elif line.startswith("resources:") and rule is not None:
            found = re.search(r"\bruntime=(\d+)", line)
            jobs.append((rule, wildcards, int(found.group(1)) if found else 0))
            rule = None
    return jobs


def group_jobs(directory: Path, configfile: Path, config: dict, group_components: dict,
               cores: int = 8) -> list[dict]:
    """The group jobs Snakemake forms for a cluster run of this repository's Snakefile with
    ``group_components`` (a profile's ``group-components``) and ``--cores cores``: per group
    its id, its members' runtimes and the runtime its one submission asks for (what an
    executor plugin such as SLURM's passes on as ``--time``). Built through Snakemake's API up
    to the DAG, as a dry run with a cluster executor does."""
    cwd = os.getcwd()  # Snakemake moves into the working directory
    try:
        return _group_jobs(directory, configfile, config, group_components, cores)
    finally:
        os.chdir(cwd)


def _group_jobs(directory, configfile, config, group_components, cores):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, ExecutionSettings,
                                          GroupSettings, OutputSettings, Quietness,
                                          RemoteExecutionSettings, ResourceSettings,
                                          SchedulingSettings, StorageSettings)
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=cores, nodes=100),
                          config_settings=ConfigSettings(configfiles=[configfile], config=config),
                          storage_settings=StorageSettings(), workdir=directory,
                          snakefile=ROOT / "Snakefile")
        wf.dag(dag_settings=DAGSettings())
        w = wf._workflow
        w._executor_plugin = ExecutorPluginRegistry().get_plugin("dryrun")
        w.execution_settings = ExecutionSettings()
        w.remote_execution_settings = RemoteExecutionSettings()
        w.scheduling_settings = SchedulingSettings()
        w.group_settings = GroupSettings(group_components=group_components)
        w._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
        w._build_dag()
        w.dag.update_groups()  # with the settings above, as execute_workflow does
        return [{"group": g.groupid, "runtimes": [j.resources.get("runtime", 0) for j in g.jobs],
                 "runtime": g.resources["runtime"]} for g in set(w.dag._group.values())]
