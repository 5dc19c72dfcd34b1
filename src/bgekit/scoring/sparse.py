"""Lexical (sparse) scores: the sum over shared tokens of the product of weights."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence

import numpy as np
import scipy.sparse as sp

from bgekit.scoring.segments import segment_rows
from bgekit.types import SparseVec


def _flatten(vecs: Sequence[SparseVec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of each entry, token ids, weights), concatenated over ``vecs``."""
    counts = np.fromiter((len(v) for v in vecs), dtype=np.int64, count=len(vecs))
    rows = np.repeat(np.arange(len(vecs), dtype=np.int64), counts)
    if len(vecs) == 0 or counts.sum() == 0:
        return rows, np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids = np.concatenate([v.indices for v in vecs])
    vals = np.concatenate([v.values for v in vecs])
    return rows, ids, vals


def max_per_token(
    rows: np.ndarray, ids: np.ndarray, weights: np.ndarray, n_rows: int, *, drop_ids: Collection[int] = ()
) -> list[SparseVec]:
    """Per row, each token id's largest weight: the one rule that makes several weights
    of a token one sparse-vector entry (BGE-M3's sparse head over an input's tokens, the
    windows of a long input, a chunk's tokens). Entries of weight <= 0 or with an id in
    ``drop_ids`` (special tokens) are left out. ``rows``, ``ids``, ``weights``: one entry
    each, in any order; rows run from 0 to ``n_rows - 1``.

    Vectorised: every (row, token) pair becomes one integer key; the keys are sorted and
    each key's weights reduced with a maximum.

    >>> rows, ids = np.array([0, 0, 0, 2, 2, 2]), np.array([7, 3, 7, 7, 1, 5])
    >>> w = np.array([0.5, 0.25, 0.75, 0.125, 0.0, 1.0])
    >>> [v.to_dict() for v in max_per_token(rows, ids, w, 3, drop_ids={5})]
    [{3: 0.25, 7: 0.75}, {}, {7: 0.125}]
    """
    rows, ids = np.asarray(rows, dtype=np.int64), np.asarray(ids, dtype=np.int64)
    vals = np.asarray(weights, dtype=np.float32)
    keep = vals > 0
    if drop_ids:
        keep &= ~np.isin(ids, np.fromiter(drop_ids, dtype=np.int64, count=len(drop_ids)))
    rows, ids, vals = rows[keep], ids[keep], vals[keep]
    if ids.size == 0:
        return [SparseVec(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(n_rows)]
    width = int(ids.max()) + 1
    key = rows * width + ids
    order = np.argsort(key, kind="stable")
    key, vals = key[order], vals[order]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    vals, key = np.maximum.reduceat(vals, starts), key[starts]
    rows, ids = key // width, key % width
    bounds = np.searchsorted(rows, np.arange(n_rows + 1))
    return [SparseVec(ids[a:b], vals[a:b]) for a, b in itertools.pairwise(bounds)]


def to_csr(vecs: Sequence[SparseVec], vocab_size: int) -> sp.csr_matrix:
    """Stack sparse vectors into a ``(len(vecs), vocab_size)`` CSR matrix."""
    rows, ids, vals = _flatten(vecs)
    if ids.size and int(ids.max()) >= vocab_size:
        raise ValueError(f"token id {int(ids.max())} is outside a vocabulary of {vocab_size}")
    return sp.csr_matrix((vals, (rows, ids)), shape=(len(vecs), vocab_size), dtype=np.float32)


def sparse_scores(queries: Sequence[SparseVec], docs: Sequence[SparseVec]) -> np.ndarray:
    """All-pairs lexical scores ``(n, m)``, as one sparse matrix product.

    >>> q = [SparseVec.from_dict({1: 0.5, 7: 2.0})]
    >>> d = [SparseVec.from_dict({7: 0.25}), SparseVec.from_dict({1: 1.0, 3: 9.0})]
    >>> sparse_scores(q, d).tolist()
    [[0.5, 0.5]]
    """
    vocab = 1 + max(
        (int(v.indices[-1]) for v in [*queries, *docs] if len(v)),
        default=0,
    )
    out = to_csr(queries, vocab) @ to_csr(docs, vocab).T
    return np.asarray(out.toarray(), dtype=np.float32)


def sparse_pair_scores(queries: Sequence[SparseVec], docs: Sequence[SparseVec]) -> np.ndarray:
    """Lexical scores of aligned pairs ``(n,)``, with no per-pair Python loop.

    Every (pair, token) entry becomes one integer key; the query keys are looked up
    among the sorted passage keys, matching entries multiplied and summed per pair.

    >>> q = [SparseVec.from_dict({1: 0.5, 7: 2.0}), SparseVec.from_dict({4: 1.0})]
    >>> d = [SparseVec.from_dict({7: 0.25, 9: 1.0}), SparseVec.from_dict({5: 1.0})]
    >>> sparse_pair_scores(q, d).tolist()
    [0.5, 0.0]
    """
    if len(queries) != len(docs):
        raise ValueError(f"{len(queries)} queries but {len(docs)} passages")
    n = len(queries)
    q_rows, q_ids, q_vals = _flatten(queries)
    d_rows, d_ids, d_vals = _flatten(docs)
    if q_ids.size == 0 or d_ids.size == 0:
        return np.zeros(n, dtype=np.float32)
    width = int(max(q_ids.max(), d_ids.max())) + 1
    q_keys = q_rows * width + q_ids
    d_keys = d_rows * width + d_ids  # sorted: rows ascend, ids ascend within a row
    pos = np.minimum(np.searchsorted(d_keys, q_keys), d_keys.size - 1)
    hit = d_keys[pos] == q_keys
    contrib = q_vals[hit].astype(np.float64) * d_vals[pos[hit]]
    return np.bincount(q_rows[hit], weights=contrib, minlength=n).astype(np.float32)


def sparse_postings_scores(postings: sp.csr_matrix, query: SparseVec) -> np.ndarray:
    """Lexical scores of one query against every document of an inverted index.

    ``postings`` is ``(vocab, n_docs)``: row ``t`` lists the documents holding token ``t``
    and their weights. Only the query's posting lists are read.

    >>> docs = [SparseVec.from_dict({1: 2.0}), SparseVec.from_dict({1: 1.0, 4: 3.0})]
    >>> post = to_csr(docs, 6).T.tocsr()
    >>> sparse_postings_scores(post, SparseVec.from_dict({1: 0.5, 4: 1.0, 5: 9.0})).tolist()
    [1.0, 3.5]
    """
    n_docs = postings.shape[1]
    known = query.indices < postings.shape[0]
    ids, weights = query.indices[known], query.values[known]
    starts = postings.indptr[ids]
    lengths = postings.indptr[ids + 1] - starts
    rows = segment_rows(starts, lengths)
    contrib = postings.data[rows].astype(np.float64) * np.repeat(weights, lengths)
    return np.bincount(postings.indices[rows], weights=contrib, minlength=n_docs).astype(np.float32)
