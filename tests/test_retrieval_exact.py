from __future__ import annotations

import numpy as np
import pytest

from bgekit import InputError, SparseVec, maxsim_scores, sparse_scores, weighted_fusion
from bgekit.retrieval import HybridConfig, exact, search, search_dense, search_sparse, top_k
from bgekit.scoring import reciprocal_rank_fusion
from bgekit.types import Encoded
from tests.test_scoring import random_multi, random_sparse


def brute(scores: np.ndarray, k: int) -> list[list[int]]:
    return [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact, "BLOCK", 64 * 7)  # 7 documents per block: forces merging


def test_dense_search_equals_full_sort(small_blocks: None) -> None:
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(13, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    hits = search_dense(q, d, 10)
    full = q @ d.T
    assert [h.indices.tolist() for h in hits] == brute(full, 10)
    np.testing.assert_allclose(hits[0].scores, np.sort(full[0])[::-1][:10], rtol=1e-6)
    assert len(search_dense(q, d, 500)[0]) == 50


def test_sparse_search_equals_full_sort(small_blocks: None) -> None:
    rng = np.random.default_rng(1)
    q, d = random_sparse(rng, 9), random_sparse(rng, 40)
    hits = search_sparse(q, d, 5)
    full = sparse_scores(q, d)
    for h, row in zip(hits, full, strict=True):
        np.testing.assert_allclose(h.scores, np.sort(row)[::-1][:5], rtol=1e-6)
        np.testing.assert_allclose(row[h.indices], h.scores, rtol=1e-6)


def encoded(rng: np.random.Generator, n: int) -> Encoded:
    dense = rng.normal(size=(n, 6)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return Encoded(dense=dense, sparse=random_sparse(rng, n), multivector=random_multi(rng, n, dim=6))


def test_hybrid_over_all_documents_equals_fused_matrices() -> None:
    rng = np.random.default_rng(2)
    q, d = encoded(rng, 7), encoded(rng, 30)
    assert (
        q.dense is not None
        and d.dense is not None
        and q.sparse
        and d.sparse
        and q.multivector
        and d.multivector
    )
    full = [
        q.dense @ d.dense.T,
        sparse_scores(q.sparse, d.sparse),
        maxsim_scores(q.multivector, d.multivector),
    ]
    w = (0.4, 0.2, 0.4)
    hits = search(q, d, 8, HybridConfig(weights=w, candidates=None))
    fused = weighted_fusion(full, w)
    for h, row in zip(hits, fused, strict=True):
        np.testing.assert_allclose(h.scores, np.sort(row)[::-1][:8], rtol=1e-5, atol=1e-6)
    rrf = search(q, d, 8, HybridConfig(weights=w, candidates=None, fusion="rrf"))
    expected = reciprocal_rank_fusion(full)
    for h, row in zip(rrf, expected, strict=True):
        np.testing.assert_allclose(h.scores, np.sort(row)[::-1][:8], rtol=1e-6)


def test_candidates_come_from_dense_and_sparse_lists() -> None:
    rng = np.random.default_rng(3)
    q, d = encoded(rng, 5), encoded(rng, 40)
    assert q.dense is not None and d.dense is not None and q.sparse and d.sparse
    hits = search(q, d, 40, HybridConfig(weights=(0, 0, 1), candidates=3))
    dense_top = top_k(q.dense @ d.dense.T, 3)[0]
    sparse_top = top_k(sparse_scores(q.sparse, d.sparse), 3)[0]
    for i, h in enumerate(hits):
        assert set(h.indices.tolist()) == set(dense_top[i]) | set(sparse_top[i])


def test_search_errors() -> None:
    rng = np.random.default_rng(4)
    q, d = encoded(rng, 2), encoded(rng, 3)
    with pytest.raises(InputError, match="k must be at least 1"):
        search(q, d, 0)
    with pytest.raises(InputError, match="weights"):
        HybridConfig(weights=(0, 0, 0))
    dense_only = Encoded(dense=q.dense)
    with pytest.raises(InputError, match="sparse, multivector"):
        search(dense_only, d, 2, HybridConfig(weights=(1, 1, 1)))


def test_empty_sparse_vectors_are_fine() -> None:
    q = [SparseVec.from_dict({})]
    d = [SparseVec.from_dict({1: 1.0}), SparseVec.from_dict({})]
    hit = search_sparse(q, d, 2)[0]
    assert hit.scores.tolist() == [0.0, 0.0]
