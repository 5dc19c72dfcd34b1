"""Combining scores of several modes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_fusion(scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum divided by the sum of the weights (BGE-M3's combined score).

    >>> weighted_fusion([np.array([1.0]), np.array([0.0]), np.array([0.5])], [0.4, 0.2, 0.4]).astype(float).round(6).tolist()
    [0.6]
    """
    if len(scores) != len(weights):
        raise ValueError(f"{len(scores)} score arrays but {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must not be negative, got {list(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("the weights sum to zero")
    acc = np.zeros_like(np.asarray(scores[0], dtype=np.float64))
    for s, w in zip(scores, weights, strict=True):
        acc = acc + float(w) * np.asarray(s, dtype=np.float64)
    return (acc / total).astype(np.float32)


def reciprocal_rank_fusion(scores: Sequence[np.ndarray], k: float = 60.0) -> np.ndarray:
    """RRF: sum over modes of ``1 / (k + rank)``, rank from 1, along the last axis.

    >>> reciprocal_rank_fusion([np.array([3.0, 1.0, 2.0]), np.array([0.0, 5.0, 4.0])], k=1).astype(float).round(4).tolist()
    [0.75, 0.75, 0.6667]
    """
    if not scores:
        raise ValueError("no score arrays to fuse")
    acc = np.zeros(np.shape(scores[0]), dtype=np.float64)
    for s in scores:
        order = np.argsort(-np.asarray(s), axis=-1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, order.shape[-1] + 1), axis=-1)
        acc += 1.0 / (k + ranks)
    return acc.astype(np.float32)
