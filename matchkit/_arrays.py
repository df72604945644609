"""Array helpers where NumPy's general function is slow for our shapes."""

from __future__ import annotations

import numpy as np


def unique(values) -> np.ndarray:
    """``np.unique(values)`` of a 1-d array, by sorting.

    NumPy 2.3+ finds the distinct values of a plain ``np.unique`` call with a
    hash table, then sorts them: measured here (NumPy 2.4, 1.2M random
    int64) 1.33 s against 0.09 s for a sort and a comparison of neighbours.
    Incremental matching and vote counting call it on millions of keys.
    """
    values = np.sort(np.asarray(values).ravel())
    if len(values) < 2:
        return values
    keep = np.empty(len(values), bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]
