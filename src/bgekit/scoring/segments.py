"""Gathering variable-length segments of a packed array without a Python loop."""

from __future__ import annotations

import numpy as np


def segment_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row numbers of the segments ``[starts[i], starts[i] + lengths[i])``, concatenated.

    >>> segment_rows(np.array([5, 0, 9]), np.array([2, 1, 3])).tolist()
    [5, 6, 0, 9, 10, 11]
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
