"""The workflow's dry run on a config, as a user starts it (``snakemake --dry-run``)."""
from __future__ import annotations

import os
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
