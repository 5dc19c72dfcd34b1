from __future__ import annotations

import numpy as np
import pytest

from bgekit import (
    SparseVec,
    dense_pair_scores,
    dense_scores,
    maxsim_pair_scores,
    maxsim_scores,
    reciprocal_rank_fusion,
    sparse_pair_scores,
    sparse_scores,
    weighted_fusion,
)
from bgekit.scoring import max_per_token
from tests.reference import lexical, maxsim


def random_sparse(rng: np.random.Generator, n: int, vocab: int = 50) -> list[SparseVec]:
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 12))
        ids = rng.choice(vocab, size=k, replace=False)
        out.append(SparseVec.from_dict({int(i): float(rng.random() + 0.01) for i in ids}))
    return out


def random_multi(rng: np.random.Generator, n: int, dim: int = 8) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        v = rng.normal(size=(int(rng.integers(1, 15)), dim)).astype(np.float32)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


def test_sparse_pairs_and_matrix_equal_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    q, d = random_sparse(rng, 40), random_sparse(rng, 40)
    expected = [lexical(a.to_dict(), b.to_dict()) for a, b in zip(q, d, strict=True)]
    np.testing.assert_allclose(sparse_pair_scores(q, d), expected, rtol=1e-6, atol=1e-7)
    matrix = sparse_scores(q, d)
    full = [[lexical(a.to_dict(), b.to_dict()) for b in d] for a in q]
    np.testing.assert_allclose(matrix, full, rtol=1e-5, atol=1e-6)
    assert sparse_pair_scores([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 queries but 1 passages"):
        sparse_pair_scores(q[:2], d[:1])


def test_max_per_token_equals_a_plain_loop() -> None:
    rng = np.random.default_rng(6)
    n = 9  # row 8 gets nothing; ids repeat within rows; some weights are 0 or negative
    rows, ids = rng.integers(0, 8, size=400), rng.integers(0, 30, size=400)
    weights = rng.normal(size=400).astype(np.float32)
    drop = {0, 1}
    want: list[dict[int, float]] = [{} for _ in range(n)]
    for r, t, w in zip(rows.tolist(), ids.tolist(), weights.tolist(), strict=True):
        if w > 0 and t not in drop and w > want[r].get(t, 0.0):
            want[r][t] = w
    got = max_per_token(rows, ids, weights, n, drop_ids=drop)
    assert [v.to_dict() for v in got] == want and got[-1] == SparseVec.from_dict({})
    assert all(np.all(np.diff(v.indices) > 0) and v.values.dtype == np.float32 for v in got)
    assert [len(v) for v in max_per_token(rows[:0], ids[:0], weights[:0], 2)] == [0, 0]


def test_maxsim_pairs_and_matrix_equal_a_plain_loop() -> None:
    rng = np.random.default_rng(1)
    q, d = random_multi(rng, 30), random_multi(rng, 30)
    np.testing.assert_allclose(
        maxsim_pair_scores(q, d), [maxsim(a, b) for a, b in zip(q, d, strict=True)], atol=1e-6
    )
    np.testing.assert_allclose(maxsim_scores(q, d), [[maxsim(a, b) for b in d] for a in q], atol=1e-6)


def test_maxsim_keeps_negative_best_scores() -> None:
    # padding must never win the max: a query whose every similarity is negative
    q = [np.array([[1.0, 0.0]], dtype=np.float32)] * 2
    d = [np.array([[-1.0, 0.0]], dtype=np.float32), np.array([[-0.6, 0.8]] * 5, dtype=np.float32)]
    assert maxsim_pair_scores(q, d).tolist() == pytest.approx([-1.0, -0.6])
    assert maxsim_scores(q[:1], d)[0].tolist() == pytest.approx([-1.0, -0.6])


def test_dense_and_fusion() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    np.testing.assert_allclose(dense_pair_scores(a, b), np.diag(dense_scores(a, b)), rtol=1e-5)
    s = [rng.normal(size=5) for _ in range(3)]
    np.testing.assert_allclose(weighted_fusion(s, [1, 2, 3]), (s[0] + 2 * s[1] + 3 * s[2]) / 6, rtol=1e-5)
    with pytest.raises(ValueError, match="sum to zero"):
        weighted_fusion(s, [0, 0, 0])
    rrf = reciprocal_rank_fusion([np.array([0.9, 0.1]), np.array([0.2, 0.8])])
    assert rrf[0] == pytest.approx(rrf[1])


def test_sparse_vec_round_trip_and_validation() -> None:
    v = SparseVec.from_dict({9: 0.5, 2: 1.5})
    assert v.indices.tolist() == [2, 9] and v.to_dict() == {2: 1.5, 9: 0.5}
    assert SparseVec.from_dict(v.to_dict()) == v
    with pytest.raises(ValueError):
        SparseVec(np.array([1, 2]), np.array([1.0], dtype=np.float32))
