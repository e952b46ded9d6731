"""Bands of target rows for DINO's label propagation with a restricted neighbourhood (the
tracking protocol, ``docs/protocols.md#tracking``): how many target rows one band takes so that
its similarities fit a budget. The numpy path (:mod:`patchlens.evaluation.propagation`), its
torch twin and the resource plan (:func:`patchlens.tasks.tracking.flop`) share it."""
from __future__ import annotations

CPU_BAND_BUDGET = 1 << 24  # similarity entries per band on the CPU (64 MB of float32)


def band_rows(h: int, w: int, n_ctx: int, radius: int, budget: int | None = None) -> int:
    """Target rows per band: about radius / 2 (sources are only the rows within the radius, so
    thin bands skip part of the frame), all rows when unrestricted or when ``budget`` (similarity
    entries per band; default :data:`CPU_BAND_BUDGET`) is a device's, larger than the CPU's; fewer
    while a band's similarities exceed the budget. The numpy and the torch path share it."""
    budget = CPU_BAND_BUDGET if budget is None else budget
    rows = max(1, radius // 2) if radius > 0 else h
    if radius > 0 and budget > (1 << 24):            # a larger budget: wider bands
        rows = h
    while rows > 1:
        src_rows = h if radius <= 0 else min(h, rows + 2 * radius)
        if rows * w * n_ctx * src_rows * w <= budget:
            break
        rows //= 2
    return rows
