"""Constructed attention rows shared by the attention statistics and offset-head tests."""
import itertools

import numpy as np


def shift_rows(k: int, dy: int, dx: int) -> np.ndarray:
    """(P, P) patch-key rows, P = k*k: each query of a k x k grid attends to (row+dy, col+dx);
    where that leaves the grid, to (row-dy, col-dx)."""
    p = k * k
    r = np.zeros((p, p))
    for y, x in itertools.product(range(k), range(k)):
        ty, tx = y + dy, x + dx
        if not (0 <= ty < k and 0 <= tx < k):
            ty, tx = y - dy, x - dx
        r[y * k + x, ty * k + tx] = 1
    return r
