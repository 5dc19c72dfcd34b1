"""Exact (brute-force) search over encoded corpora, memory-bounded by chunking.

Dense and sparse search score every document (one matrix product per block of queries and
documents) and keep a running top-k. Multi-vector and hybrid search score (query,
document) pairs: over a candidate set taken from the dense/sparse top lists, or over all
documents when ``candidates`` is ``None``; the modes are then fused (weighted sum divided
by the sum of the weights, or reciprocal-rank fusion).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from bgekit.errors import InputError
from bgekit.scoring import (
    dense_scores,
    maxsim_pair_scores,
    reciprocal_rank_fusion,
    sparse_pair_scores,
    weighted_fusion,
)
from bgekit.scoring.sparse import to_csr
from bgekit.types import OUTPUT_KINDS, Encoded, OutputKind, Ranking, SparseVec

# Entries of one (queries x documents) score block: 64 MB of float32.
BLOCK = 1 << 24


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best columns and their scores, best first (ties: lower column).

    >>> idx, val = top_k(np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]]), 2)
    >>> idx.tolist(), val.tolist()
    ([[1, 2], [0, 2]], [[0.9, 0.5], [3.0, 2.0]])
    """
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(vals, order, axis=1)


def _blocked_search(
    n_queries: int,
    n_docs: int,
    k: int,
    score_block: Callable[[slice, slice], np.ndarray],
    desc: str,
    progress: bool,
) -> list[Ranking]:
    """Top-k over all documents, computing scores one (query block, doc block) at a time."""
    if n_docs == 0:
        return [Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(n_queries)]
    doc_step = max(1, min(n_docs, BLOCK // 64))
    q_step = max(1, BLOCK // doc_step)
    out: list[Ranking] = []
    with tqdm(total=n_queries, desc=desc, unit="query", disable=not progress) as bar:
        for qs in range(0, n_queries, q_step):
            qsl = slice(qs, min(n_queries, qs + q_step))
            best_idx = best_val = None
            for ds in range(0, n_docs, doc_step):
                dsl = slice(ds, min(n_docs, ds + doc_step))
                idx, val = top_k(score_block(qsl, dsl), k)
                idx = idx + ds
                if best_idx is None or best_val is None:
                    best_idx, best_val = idx, val
                    continue
                merged_idx = np.concatenate([best_idx, idx], axis=1)
                merged_val = np.concatenate([best_val, val], axis=1)
                pick, best_val = top_k(merged_val, k)
                best_idx = np.take_along_axis(merged_idx, pick, axis=1)
            assert best_idx is not None and best_val is not None
            out.extend(
                Ranking(i.astype(np.int64), v.astype(np.float32))
                for i, v in zip(best_idx, best_val, strict=True)
            )
            bar.update(qsl.stop - qsl.start)
    return out


def search_dense(queries: np.ndarray, docs: np.ndarray, k: int, *, progress: bool = False) -> list[Ranking]:
    """Exact inner-product top-k of every query over all documents."""
    return _blocked_search(
        len(queries), len(docs), k, lambda q, d: dense_scores(queries[q], docs[d]), "dense search", progress
    )


def search_sparse(
    queries: Sequence[SparseVec], docs: Sequence[SparseVec], k: int, *, progress: bool = False
) -> list[Ranking]:
    """Exact lexical top-k: one sparse matrix product per block, no per-pair loop."""
    vocab = 1 + max((int(v.indices[-1]) for v in [*queries, *docs] if len(v)), default=0)
    qm, dm = to_csr(queries, vocab), to_csr(docs, vocab).T.tocsc()

    def block(q: slice, d: slice) -> np.ndarray:
        return np.asarray((qm[q] @ dm[:, d]).toarray(), dtype=np.float32)

    return _blocked_search(len(queries), len(docs), k, block, "sparse search", progress)


@dataclass(frozen=True, kw_only=True)
class HybridConfig:
    """How modes are mixed. ``weights`` are (dense, sparse, multivector); a zero weight
    leaves a mode out. ``candidates``: per query, the union of the dense and sparse top
    ``candidates`` is scored in every mode; ``None`` scores all documents (small corpora).
    ``fusion``: ``"weighted"`` (BGE-M3's weighted sum / sum of weights) or ``"rrf"``."""

    weights: tuple[float, float, float] = (0.4, 0.2, 0.4)
    candidates: int | None = 1000
    fusion: Literal["weighted", "rrf"] = "weighted"
    rrf_k: float = 60.0

    def __post_init__(self) -> None:
        if len(self.weights) != 3 or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise InputError(
                f"weights must be three non-negative numbers with a positive sum, got {self.weights}"
            )
        if self.candidates is not None and self.candidates < 1:
            raise InputError(f"candidates must be at least 1 (or None for all), got {self.candidates}")
        if self.fusion not in ("weighted", "rrf"):
            raise InputError(f"fusion must be 'weighted' or 'rrf', got {self.fusion!r}")


def fuse(per_mode: Sequence[np.ndarray], weights: Sequence[float], cfg: HybridConfig) -> np.ndarray:
    """One query's candidates: mode scores combined as ``cfg.fusion`` says."""
    if cfg.fusion == "weighted":
        return weighted_fusion(per_mode, weights)
    return reciprocal_rank_fusion(per_mode, k=cfg.rrf_k)


def _modes(q: Encoded, d: Encoded, weights: Sequence[float]) -> list[OutputKind]:
    modes = [m for m, w in zip(OUTPUT_KINDS, weights, strict=True) if w > 0]
    missing = [m for m in modes if m not in q.outputs or m not in d.outputs]
    if missing:
        raise InputError(f"weights ask for {', '.join(missing)}, which the encodings do not hold")
    return modes


def _pair_scores(q: Encoded, d: Encoded, mode: OutputKind, qi: np.ndarray, di: np.ndarray) -> np.ndarray:
    if mode == "dense":
        assert q.dense is not None and d.dense is not None
        return np.einsum("ij,ij->i", q.dense[qi], d.dense[di]).astype(np.float32)
    if mode == "sparse":
        assert q.sparse is not None and d.sparse is not None
        return sparse_pair_scores([q.sparse[i] for i in qi], [d.sparse[i] for i in di])
    assert q.multivector is not None and d.multivector is not None
    return maxsim_pair_scores([q.multivector[i] for i in qi], [d.multivector[i] for i in di])


def search(
    queries: Encoded, docs: Encoded, k: int, config: HybridConfig | None = None, *, progress: bool = False
) -> list[Ranking]:
    """Top-k per query in the modes ``config.weights`` selects, fused.

    A single dense or sparse mode (or dense + sparse over all documents) is searched
    exhaustively; anything involving multi-vectors is scored over candidates.
    """
    cfg = config or HybridConfig()
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    modes = _modes(queries, docs, cfg.weights)
    n_docs = len(docs)
    if modes == ["dense"]:
        assert queries.dense is not None and docs.dense is not None
        return search_dense(queries.dense, docs.dense, k, progress=progress)
    if modes == ["sparse"]:
        assert queries.sparse is not None and docs.sparse is not None
        return search_sparse(queries.sparse, docs.sparse, k, progress=progress)

    first = [m for m in ("dense", "sparse") if m in queries.outputs and m in docs.outputs]
    n_cand = n_docs if cfg.candidates is None else min(cfg.candidates, n_docs)
    if n_cand >= n_docs:
        cand = [np.arange(n_docs, dtype=np.int64)] * len(queries)
    else:
        lists = []
        for m in first:
            if m == "dense":
                assert queries.dense is not None and docs.dense is not None
                lists.append(search_dense(queries.dense, docs.dense, n_cand, progress=progress))
            else:
                assert queries.sparse is not None and docs.sparse is not None
                lists.append(search_sparse(queries.sparse, docs.sparse, n_cand, progress=progress))
        cand = [np.unique(np.concatenate([r[i].indices for r in lists])) for i in range(len(queries))]

    out: list[Ranking] = []
    step = max(1, 200_000 // max(1, max(len(c) for c in cand)))
    weights = [w for m, w in zip(OUTPUT_KINDS, cfg.weights, strict=True) if m in modes]
    with tqdm(total=len(queries), desc="hybrid search", unit="query", disable=not progress) as bar:
        for start in range(0, len(queries), step):
            block = range(start, min(len(queries), start + step))
            qi = np.concatenate([np.full(len(cand[i]), i, dtype=np.int64) for i in block])
            di = np.concatenate([cand[i] for i in block])
            per_mode = [_pair_scores(queries, docs, m, qi, di) for m in modes]
            bounds = np.cumsum([0, *(len(cand[i]) for i in block)])
            for j, i in enumerate(block):
                part = slice(bounds[j], bounds[j + 1])
                fused = fuse([s[part] for s in per_mode], weights, cfg)
                idx, val = top_k(fused[None, :], k)
                out.append(Ranking(cand[i][idx[0]], val[0].astype(np.float32)))
            bar.update(len(block))
    return out
