"""A registry package with one more module, as if the file had been added to its directory.

The task and analysis registries promise that a new task or analysis is one new module: the
tests write that module to a directory of their own and run a probe in a fresh interpreter in
which the package (``patchlens.tasks``, ``patchlens.analysis``) also searches that directory, so
that its ``__init__`` imports the new module with the others and nothing else changes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PRELUDE = '''
import importlib.util, sys
spec = importlib.util.find_spec({package!r})
spec.submodule_search_locations.append(sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[{package!r}] = mod
spec.loader.exec_module(mod)
'''


def probe_with_module(package: str, module: str, source: str, probe: str, workdir: Path,
                      *args: str):
    """Run ``probe`` (Python source) with ``package`` extended by ``module`` (``source``,
    dedented) and return the JSON its last output line holds. The probe sees the extra
    directory as ``sys.argv[1]`` and ``args`` from ``sys.argv[2]`` on; it runs in ``workdir``."""
    extra = workdir / "extra"
    extra.mkdir()
    (extra / f"{module}.py").write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", _PRELUDE.format(package=package) + probe,
                           str(extra), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
