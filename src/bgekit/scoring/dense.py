"""Dense (single-vector) similarity."""

from __future__ import annotations

import numpy as np

from bgekit.errors import InputError


def dense_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """All-pairs inner products, ``(n, d) x (m, d) -> (n, m)``.

    >>> dense_scores(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5], [0.0, 1.0]])).tolist()
    [[0.5, 0.0]]
    """
    return np.asarray(queries @ docs.T, dtype=np.float32)


def dense_pair_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Row-wise inner products of aligned pairs, ``(n, d) x (n, d) -> (n,)``.

    >>> dense_pair_scores(np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([[3.0, 1.0], [2.0, 2.0]])).tolist()
    [5.0, 2.0]
    """
    if queries.shape != docs.shape:
        raise ValueError(f"pair shapes differ: {queries.shape} vs {docs.shape}")
    return np.einsum("ij,ij->i", queries, docs).astype(np.float32)


def truncate_dimensions(vectors: np.ndarray, dims: int, *, normalize: bool) -> np.ndarray:
    """Matryoshka truncation: the first ``dims`` components of each vector, re-normalised
    when the model's vectors are normalised.

    >>> truncate_dimensions(np.array([[3.0, 4.0, 12.0]]), 2, normalize=True).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    size = vectors.shape[-1]
    if not 1 <= dims <= size:
        raise InputError(f"dimensions {dims} is outside 1..{size} (the model's vector size)")
    out = np.asarray(vectors[..., :dims], dtype=np.float32)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out
