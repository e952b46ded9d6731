"""Mounts for the tests that need a real file system condition (a full disk, a read-only tree)."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted(args: list[str], target: Path, why_skip: str):
    """``mount <args> <target>`` while the block runs (lazily unmounted after); the test is
    skipped with ``why_skip`` when the mount fails (no root, no mount rights)."""
    if subprocess.run(["mount", *args, str(target)], capture_output=True).returncode != 0:
        pytest.skip(why_skip)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
