"""The thin layer between Snakemake ``script:`` files and the package: logging into the rule's
log file, temporaries of killed runs removed, and every failure reported as one line."""
from __future__ import annotations

import logging
import sys
import traceback

from patchlens.errors import PatchlensError
from patchlens.io import remove_stale_temporaries


def failure_line(exc: BaseException) -> str:
    """The one line a user sees for a failure: a PatchlensError's own message; for anything else
    the exception type and its first line (e.g. ``OSError: [Errno 28] No space left on
    device``), with a pointer to the traceback in the log."""
    if isinstance(exc, PatchlensError):
        return " ".join(str(exc).split())
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run(snakemake, main) -> None:
    """Call ``main(snakemake)`` with logging to the rule's ``log[0]`` and stderr.

    Before it, stale ``.<output>.*.tmp`` files of this rule's outputs (left by a killed run) are
    removed. Any failure ends the job with exit code 1 and its one-line message
    (:func:`failure_line`) in the log and on stderr; an exception that is not a PatchlensError
    (a bug, a full disk, a corrupt weights file) also gets its traceback written to the log,
    after that line."""
    log_file = snakemake.log[0] if len(snakemake.log) else None
    handlers = [logging.StreamHandler(sys.stderr)]
    file_handler = None
    if log_file:
        file_handler = logging.FileHandler(log_file, mode="w")
        handlers.append(file_handler)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing noise
    log = logging.getLogger("patchlens")
    try:
        for out in snakemake.output:
            for tmp in remove_stale_temporaries(out):
                log.info("removed %s, left by an interrupted run", tmp)
        main(snakemake)
    except PatchlensError as exc:
        log.error("%s", failure_line(exc))
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 -- every failure is one line, the details in the log
        where = f"; traceback in {log_file}" if log_file else ""
        log.error("%s%s", failure_line(exc), where)
        if file_handler is not None:
            file_handler.stream.write("".join(traceback.format_exception(exc)))
            file_handler.flush()
        else:
            traceback.print_exception(exc, file=sys.stderr)
        sys.exit(1)
