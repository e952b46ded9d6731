"""The thin layer between Snakemake ``script:`` files and the package: logging into the rule's
log file, and user errors reported as one line instead of a traceback."""
from __future__ import annotations

import logging
import sys

from patchlens.errors import PatchlensError


def run(snakemake, main) -> None:
    """Call ``main(snakemake)`` with logging to the rule's ``log[0]``; a PatchlensError ends the
    job with its one-line message (in the log and on stderr) and a non-zero exit code."""
    log_file = snakemake.log[0] if len(snakemake.log) else None
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing noise
    log = logging.getLogger("patchlens")
    try:
        main(snakemake)
    except PatchlensError as exc:
        log.error("%s", exc)
        sys.exit(1)
