"""Progress a user can read (issue 20 item 8): a long job writes one line to its log at least
every ``every_s`` seconds of progress -- done / total, rate, estimated time left -- and, when
stderr is a terminal, also draws a progress bar (tqdm where installed, else one ``\\r`` line).

    for batch in progress(batches, "images", log):        # an iterable: one step per item
        ...
    with progress(n_images, "features dino/voc", log) as p:  # a total: count with update(n)
        p.update(len(batch))

Lines are written when progress is reported, so a single step longer than ``every_s`` delays
the next one; the extractor and evaluators report every batch (seconds).
"""
from __future__ import annotations

import logging
import sys
import time


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Counts ``done`` of ``total``; see :func:`progress`."""

    def __init__(self, total: int | None, what: str, log: logging.Logger, every_s: float,
                 clock, bar: bool | None, unit: str, iterable=None):
        self.total, self.what, self.log, self.every_s = total, what, log, every_s
        self.clock, self.unit, self._iterable = clock, unit, iterable
        self.done, self.start = 0, clock()
        self._last = self.start
        self._closed = False
        tty = sys.stderr.isatty() if bar is None else bar
        self._bar = self._line = None
        if tty:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr)
            except ImportError:
                self._line = sys.stderr

    def line(self) -> str:
        """``what: done/total unit (pct), rate unit/s, elapsed, ETA h:mm:ss``."""
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = (f", ETA {_hms((self.total - self.done) / rate)}" if self.total is not None
               and rate > 0 else "")
        return (f"{self.what}: {self.done}{of} {self.unit}{pct}, {rate:.3g} {self.unit}/s, "
                f"elapsed {_hms(elapsed)}{eta}")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._line is not None:
            self._line.write("\r" + self.line())
            self._line.flush()
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.info("%s", self.line())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._line is not None:
            self._line.write("\n")
        self.log.info("%s (done)", self.line())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()

    def __iter__(self):
        for item in self._iterable:
            yield item
            self.update(1)
        self.close()


def progress(iterable_or_total, what: str, log: logging.Logger | None = None,
             every_s: float = 60.0, clock=time.monotonic, bar: bool | None = None,
             unit: str = "it") -> Progress:
    """A :class:`Progress` over an iterable (iterate it) or a total count (``update(n)``,
    ``close()`` or use as a context manager). ``log``: where the periodic lines go (default the
    ``patchlens`` logger); ``bar``: force the terminal bar on/off (default: stderr is a tty);
    ``clock``: seconds, monotonic (tests pass a fake)."""
    log = log or logging.getLogger("patchlens")
    if isinstance(iterable_or_total, int):
        return Progress(iterable_or_total, what, log, every_s, clock, bar, unit)
    total = len(iterable_or_total) if hasattr(iterable_or_total, "__len__") else None
    return Progress(total, what, log, every_s, clock, bar, unit, iterable=iterable_or_total)
