"""Seeded support sampling of the few-shot protocols (few-shot segmentation, low-shot
classification; Vanyan et al. 2024, arXiv 2401.00463, Sec. 4; ``docs/protocols.md``): for every
class, ``n_shots`` candidate images are drawn without replacement, one draw per seed.
"""
from __future__ import annotations

import numpy as np

from patchlens.errors import ConfigError


def check_seeds(seeds, where: str) -> None:
    """ConfigError unless ``seeds`` (one support draw each) is a non-empty list of integers."""
    if not isinstance(seeds, (list, tuple)) or not seeds \
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where} = {seeds!r}: expected a non-empty list of integers")


def sample_support(presence: np.ndarray, n_shots: int, seed: int,
                   classes: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Draw ``n_shots`` candidate rows per class (without replacement, seeded) from a presence
    matrix (n_images, K) bool, for the class indices ``classes`` in order. Returns the sorted
    union of the drawn rows, the classes with fewer candidates than shots (all taken) and the
    classes without candidates."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    short, missing = [], []
    for c in classes:
        cand = np.flatnonzero(presence[:, c])
        if cand.size == 0:
            missing.append(int(c))
            continue
        if cand.size < n_shots:
            short.append(int(c))
            take = cand
        else:
            take = rng.choice(cand, size=n_shots, replace=False)
        chosen.update(int(i) for i in take)
    return np.array(sorted(chosen), dtype=np.int64), short, missing
