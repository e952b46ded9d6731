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


class _LogFile(logging.FileHandler):
    """The rule's log file; when it cannot be written (disk full, read-only directory) it says
    so once on stderr and stops, so that the stderr handler alone carries the log -- instead of
    one "--- Logging error ---" traceback per message."""

    def __init__(self, path):
        self.failed: str | None = None
        super().__init__(path, mode="w", delay=True)  # opened on the first message

    def handleError(self, record):  # noqa: N802 -- logging's name
        exc = sys.exc_info()[1]
        self.fail(exc)

    def fail(self, exc) -> None:
        if self.failed is None:
            self.failed = failure_line(exc) if exc is not None else "write failed"
            sys.stderr.write(f"patchlens: cannot write the log file {self.baseFilename} "
                             f"({self.failed}); logging to stderr only\n")
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- a full disk may refuse the final flush too
            self.stream = None

    def emit(self, record):
        if self.failed is None:
            super().emit(record)

    def write_raw(self, text: str) -> bool:
        """Append ``text`` (a traceback); False when the file cannot take it."""
        if self.failed is not None:
            return False
        try:
            if self.stream is None:
                self.stream = self._open()
            self.stream.write(text)
            self.stream.flush()
            return True
        except OSError as exc:
            self.fail(exc)
            return False


def _log_file(path) -> _LogFile | None:
    """The rule's log handler, or None (and one line on stderr) when the file cannot be made."""
    handler = _LogFile(path)
    try:
        handler.stream = handler._open()
    except OSError as exc:
        handler.fail(exc)
        return None
    return handler


def run(snakemake, main) -> None:
    """Call ``main(snakemake)`` with logging to the rule's ``log[0]`` and stderr.

    Before it, stale ``.<output>.*.tmp`` files of this rule's outputs (left by a killed run) are
    removed. Any failure ends the job with exit code 1 and its one-line message
    (:func:`failure_line`) in the log and on stderr; an exception that is not a PatchlensError
    (a bug, a full disk, a corrupt weights file) also gets its traceback written to the log,
    after that line. A log file that cannot be written (read-only directory, full disk) is
    reported once on stderr, which then carries the log alone."""
    log_file = snakemake.log[0] if len(snakemake.log) else None
    handlers = [logging.StreamHandler(sys.stderr)]
    file_handler = _log_file(log_file) if log_file else None
    if file_handler is not None:
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
        logged = file_handler is not None and file_handler.failed is None
        where = f"; traceback in {log_file}" if logged else ""
        log.error("%s%s", failure_line(exc), where)
        text = "".join(traceback.format_exception(exc))
        if not (logged and file_handler.write_raw(text)):
            sys.stderr.write(text)
        sys.exit(1)
