"""The one search core (``bgekit.retrieval.search``) against full score matrices."""

from __future__ import annotations

import numpy as np
import pytest

from bgekit import InputError, SparseVec, maxsim_scores, sparse_scores, weighted_fusion
from bgekit.retrieval import Bm25, Corpus, HybridConfig, query_outputs, scorers_for, search, top_k
from bgekit.retrieval import core as search_module
from bgekit.scoring import reciprocal_rank_fusion
from bgekit.types import Encoded
from tests.test_scoring import random_multi, random_sparse


def brute(scores: np.ndarray, k: int) -> list[list[int]]:
    return [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores]


def encoded(rng: np.random.Generator, n: int) -> Encoded:
    dense = rng.normal(size=(n, 6)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return Encoded(dense=dense, sparse=random_sparse(rng, n), multivector=random_multi(rng, n, dim=6))


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_module, "BLOCK", 50 * 3)  # 3 queries per dense block


def test_dense_search_equals_full_sort(small_blocks: None) -> None:
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(13, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    hits = search(Corpus(dense=d), Encoded(dense=q), 10, mode="dense")
    full = q @ d.T
    assert [h.indices.tolist() for h in hits] == brute(full, 10)
    np.testing.assert_allclose(hits[0].scores, np.sort(full[0])[::-1][:10], rtol=1e-6)
    np.testing.assert_array_equal(hits[0].modes["dense"], hits[0].scores)
    assert len(search(Corpus(dense=d), Encoded(dense=q), 500, mode="dense")[0]) == 50


def test_sparse_search_equals_full_sort_and_drops_rows_sharing_no_term() -> None:
    rng = np.random.default_rng(1)
    q, d = random_sparse(rng, 9), random_sparse(rng, 40)
    hits = search(Corpus.from_encoded(Encoded(sparse=d)), Encoded(sparse=q), 5, mode="sparse")
    full = sparse_scores(q, d)
    for h, row in zip(hits, full, strict=True):
        expected = np.sort(row[row > 0])[::-1][:5]
        np.testing.assert_allclose(h.scores, expected, rtol=1e-6)
        np.testing.assert_allclose(row[h.indices], h.scores, rtol=1e-6)
    empty = search(
        Corpus.from_encoded(Encoded(sparse=d)), Encoded(sparse=[SparseVec.from_dict({})]), 3, mode="sparse"
    )
    assert len(empty[0]) == 0


def test_hybrid_over_every_row_equals_fused_matrices() -> None:
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
    corpus = Corpus.from_encoded(d)
    w = (0.4, 0.2, 0.4)
    hits = search(corpus, q, 8, config=HybridConfig(weights=w, candidates=None))
    fused = weighted_fusion(full, w)
    for i, (h, row) in enumerate(zip(hits, fused, strict=True)):
        np.testing.assert_allclose(h.scores, np.sort(row)[::-1][:8], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h.modes["multivector"], full[2][i][h.indices], rtol=1e-5, atol=1e-6)
    rrf = search(corpus, q, 8, config=HybridConfig(weights=w, candidates=None, fusion="rrf"))
    for i, h in enumerate(rrf):
        # a query whose sparse vector shares no term with any row: the sparse scorer sits out
        voting = [m[i] for j, m in enumerate(full) if j != 1 or full[1][i].any()]
        row = reciprocal_rank_fusion(voting)
        np.testing.assert_allclose(h.scores, np.sort(row)[::-1][:8], rtol=1e-6)
    assert any(not full[1][i].any() for i in range(len(rrf)))  # the case is exercised
    # a zero weight leaves a scorer out of the hybrid
    two = search(corpus, q, 8, config=HybridConfig(weights=(0.5, 0.0, 0.5), candidates=None))
    assert set(two[0].modes) == {"dense", "multivector"}


def test_candidates_come_from_the_dense_and_lexical_lists() -> None:
    rng = np.random.default_rng(3)
    q, d = encoded(rng, 5), encoded(rng, 40)
    assert q.dense is not None and d.dense is not None and q.sparse and d.sparse
    corpus = Corpus.from_encoded(d)
    hits = search(corpus, q, 3, mode="multivector", config=HybridConfig(candidates=3))
    wide = search(corpus, q, 40, mode="multivector", config=HybridConfig(candidates=3))
    dense_top = top_k(q.dense @ d.dense.T, 3)[0]
    sparse_full = sparse_scores(q.sparse, d.sparse)
    sparse_top = top_k(sparse_full, 3)[0]
    for i, (h, w) in enumerate(zip(hits, wide, strict=True)):
        lexical = {int(j) for j in sparse_top[i] if sparse_full[i, j] > 0}
        assert set(h.indices.tolist()) <= set(dense_top[i]) | lexical
        # each list gives at least k rows: k=40 takes all 40 from the dense list
        assert len(w) == 40


def test_bm25_stands_in_for_the_lexical_scorer_and_is_fused_by_rrf() -> None:
    texts = ["cats and dogs", "the stock market fell", "dogs chase cats", "market news today"]
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(4, 6)).astype(np.float32)
    corpus = Corpus(dense=dense, texts=texts)
    assert corpus.scorers == ("dense", "bm25")
    assert scorers_for("hybrid", corpus.scorers, HybridConfig()) == ["dense", "bm25"]
    assert HybridConfig().fusion_for(["dense", "bm25"]) == "rrf"
    assert query_outputs("hybrid", corpus.scorers) == ("dense",)
    q = Encoded(dense=rng.normal(size=(1, 6)).astype(np.float32))
    got = search(corpus, q, 4, texts=["stock market"], config=HybridConfig(candidates=None))[0]
    bm25 = Bm25(texts).scores("stock market")
    expected = reciprocal_rank_fusion([q.dense @ dense.T, bm25[None, :]])[0]  # type: ignore[operator]
    np.testing.assert_allclose(got.scores, np.sort(expected)[::-1], rtol=1e-6)
    np.testing.assert_allclose(got.modes["bm25"], bm25[got.indices], rtol=1e-6)
    only = search(corpus, Encoded(), 4, mode="bm25", texts=["stock market"])[0]
    assert set(only.indices.tolist()) == {1, 3}  # rows sharing no term are not hits


def test_a_lexical_scorer_that_matches_nothing_sits_out_the_rrf() -> None:
    # an image query has no words: BM25 scores every row 0, and ranking those ties (by row
    # order) would push rows up that the dense scorer put last
    texts = ["cats and dogs", "", "dogs chase cats", ""]
    rng = np.random.default_rng(6)
    dense = rng.normal(size=(4, 6)).astype(np.float32)
    corpus = Corpus(dense=dense, texts=texts)
    q = Encoded(dense=rng.normal(size=(1, 6)).astype(np.float32))
    for candidates in (None, 2):
        for words in ("", "stock market"):
            got = search(corpus, q, 4, texts=[words], config=HybridConfig(candidates=candidates))[0]
            scores = (q.dense @ dense.T)[0]  # type: ignore[operator]
            rows = np.argsort(-scores, kind="stable")[: len(got)]
            assert got.indices.tolist() == rows.tolist()
            np.testing.assert_allclose(got.modes["dense"], scores[rows], rtol=1e-6)
    # a query that matches something still fuses both
    got = search(corpus, q, 4, texts=["dogs"], config=HybridConfig(candidates=None))[0]
    both = reciprocal_rank_fusion([q.dense @ dense.T, Bm25(texts).scores("dogs")[None, :]])[0]  # type: ignore[operator]
    np.testing.assert_allclose(got.scores, np.sort(both)[::-1], rtol=1e-6)


def test_search_errors() -> None:
    rng = np.random.default_rng(4)
    q, d = encoded(rng, 2), encoded(rng, 3)
    corpus = Corpus.from_encoded(d)
    with pytest.raises(InputError, match="k must be at least 1"):
        search(corpus, q, 0)
    with pytest.raises(InputError, match="weights"):
        HybridConfig(weights=(0, 0, 0))
    with pytest.raises(InputError, match="mode must be one of"):
        search(corpus, q, 2, mode="fuzzy")  # type: ignore[arg-type]
    dense_only = Corpus(dense=d.dense)
    with pytest.raises(InputError, match="holds no multivector"):
        search(dense_only, q, 2, mode="multivector")
    with pytest.raises(InputError, match="bm25 needs the texts"):
        search(dense_only, q, 2, mode="bm25")
    with pytest.raises(InputError, match="zero weight"):
        search(dense_only, q, 2, config=HybridConfig(weights=(0, 1, 1)))
    with pytest.raises(InputError, match="query encodings hold no sparse"):
        search(corpus, Encoded(dense=q.dense), 2, mode="sparse")
    assert [len(r) for r in search(Corpus(dense=np.zeros((0, 6), np.float32)), q, 2, mode="dense")] == [0, 0]
