"""Progress lines (issue 20 item 8): at least one per ``every_s`` of progress, with done/total,
rate and time left computed from the clock; a bar only on a terminal."""
import logging

import pytest

from patchlens.progress import progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="patchlens")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "patchlens"]


def test_a_line_every_minute_with_rate_and_eta(lines):
    clock = Clock()
    with progress(1200, "features m/d", every_s=60, clock=clock, bar=False, unit="img") as p:
        for _ in range(40):  # 40 batches of 30 images, 20 s each: 1.5 img/s
            clock.t += 20
            p.update(30)
    got = lines()
    # a line at 60, 120, ... 780 s (every third batch), then the closing one
    assert len(got) == 40 // 3 + 1
    assert got[0] == "features m/d: 90/1200 img (8%), 1.5 img/s, elapsed 0:01:00, ETA 0:12:20"
    assert got[1].startswith("features m/d: 180/1200 img (15%), 1.5 img/s, elapsed 0:02:00, "
                             "ETA 0:11:20")
    assert got[-1] == ("features m/d: 1200/1200 img (100%), 1.5 img/s, elapsed 0:13:20, "
                       "ETA 0:00:00 (done)")


def test_slow_steps_log_every_step_and_fast_ones_stay_quiet(lines):
    clock = Clock()
    p = progress(5, "x", every_s=60, clock=clock, bar=False)
    for _ in range(5):
        clock.t += 61  # each step longer than a minute: a line after each
        p.update()
    p.close()
    assert len(lines()) == 6
    clock2 = Clock()
    for _ in progress(range(100), "fast", every_s=60, clock=clock2, bar=False):
        clock2.t += 0.1  # 10 s in all: only the closing line
    assert lines()[-1] == "fast: 100/100 it (100%), 10 it/s, elapsed 0:00:10, ETA 0:00:00 (done)"
    assert len(lines()) == 7


def test_bar_on_a_terminal_only(capsys, lines):
    for _ in progress([1, 2, 3], "bar", bar=True):
        pass
    assert "bar" in capsys.readouterr().err
    for _ in progress(iter([1, 2]), "nobar", bar=False):  # no len(): no total, no ETA
        pass
    assert capsys.readouterr().err == ""
    assert lines()[-1].startswith("nobar: 2 it, ")
