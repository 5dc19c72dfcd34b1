"""Scores of (query, passage) pairs in every mode two encodings hold, and their fusions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bgekit.errors import InputError
from bgekit.scoring.dense import dense_pair_scores
from bgekit.scoring.fusion import weighted_fusion
from bgekit.scoring.maxsim import maxsim_pair_scores
from bgekit.scoring.sparse import sparse_pair_scores
from bgekit.types import Encoded, PairScores


def encoded_pair_scores(
    queries: Encoded,
    passages: Encoded,
    q_rows: Sequence[int] | np.ndarray,
    p_rows: Sequence[int] | np.ndarray,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> PairScores:
    """Pair ``i`` is query row ``q_rows[i]`` with passage row ``p_rows[i]``; every mode both
    encodings hold is scored, and the combinations (BGE-M3's ``sparse+dense`` and
    ``colbert+sparse+dense``) are the weighted sums divided by the sum of ``weights``
    (dense, sparse, multi-vector).

    >>> q = Encoded(dense=np.array([[1.0, 0.0]], np.float32))
    >>> p = Encoded(dense=np.array([[0.6, 0.8], [1.0, 0.0]], np.float32))
    >>> encoded_pair_scores(q, p, [0, 0], [0, 1]).dense.tolist()
    [0.6000000238418579, 1.0]
    """
    if len(weights) != 3:
        raise InputError(f"weights must be (dense, sparse, multivector), got {weights!r}")
    if queries.dense is None or passages.dense is None:
        raise InputError("pair scores need dense encodings on both sides")
    qi, pi = np.asarray(q_rows, dtype=np.int64), np.asarray(p_rows, dtype=np.int64)
    dense = dense_pair_scores(queries.dense[qi], passages.dense[pi])
    sparse = multi = both = every = None
    if queries.sparse is not None and passages.sparse is not None:
        sparse = sparse_pair_scores([queries.sparse[i] for i in qi], [passages.sparse[i] for i in pi])
        both = weighted_fusion([dense, sparse], weights[:2])
    if queries.multivector is not None and passages.multivector is not None:
        q_mv, p_mv = queries.multivector, passages.multivector
        multi = maxsim_pair_scores([q_mv[i] for i in qi], [p_mv[i] for i in pi])
    if sparse is not None and multi is not None:
        every = weighted_fusion([dense, sparse, multi], weights)
    return PairScores(dense=dense, sparse=sparse, multivector=multi, sparse_dense=both, all=every)
