"""Late interaction (ColBERT MaxSim): for each query vector the best dot product over
the passage's vectors, averaged over the query vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bgekit.scoring.segments import segment_rows

# Bound on the entries of one similarity block (float32): about 256 MB.
_BLOCK = 1 << 26


def _pad(vecs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged ``(len_i, d)`` arrays into ``(n, max_len, d)`` plus a validity mask."""
    width = max(v.shape[0] for v in vecs)
    dim = vecs[0].shape[1]
    out = np.zeros((len(vecs), width, dim), dtype=np.float32)
    mask = np.zeros((len(vecs), width), dtype=bool)
    for i, v in enumerate(vecs):
        out[i, : v.shape[0]] = v
        mask[i, : v.shape[0]] = True
    return out, mask


def _check(vecs: Sequence[np.ndarray], what: str) -> None:
    for i, v in enumerate(vecs):
        if v.ndim != 2 or v.shape[0] == 0:
            raise ValueError(f"{what}[{i}] must be a non-empty (n_tokens, dim) array")


def maxsim_pair_scores(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray]) -> np.ndarray:
    """MaxSim of aligned (query, passage) pairs, batched over pairs.

    >>> q = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    >>> d = [np.array([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])]
    >>> maxsim_pair_scores(q, d).astype(float).round(6).tolist()
    [0.9]
    """
    if len(queries) != len(docs):
        raise ValueError(f"{len(queries)} queries but {len(docs)} passages")
    if not queries:
        return np.zeros(0, dtype=np.float32)
    _check(queries, "queries")
    _check(docs, "docs")
    out = np.empty(len(queries), dtype=np.float32)
    # Chunks of pairs, sorted by size so that padding stays small.
    order = np.argsort([q.shape[0] * d.shape[0] for q, d in zip(queries, docs, strict=True)])
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order):
            i = order[stop]
            if (stop - start + 1) * queries[i].shape[0] * docs[i].shape[0] > _BLOCK // 4:
                break
            stop += 1
        idx = order[start:stop]
        q, qm = _pad([queries[i] for i in idx])
        d, dm = _pad([docs[i] for i in idx])
        sim = np.matmul(q, d.transpose(0, 2, 1))  # (b, lq, ld)
        sim[~np.broadcast_to(dm[:, None, :], sim.shape)] = -np.inf
        best = np.where(qm, sim.max(axis=2), 0.0)
        out[idx] = best.sum(axis=1) / qm.sum(axis=1)
        start = stop
    return out


def maxsim_scores(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray]) -> np.ndarray:
    """All-pairs MaxSim ``(n_queries, n_docs)``.

    All query vectors are stacked and compared with blocks of padded passages at once;
    per-query means come from one segment sum.

    >>> q = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])]
    >>> d = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [0.6, 0.8]])]
    >>> maxsim_scores(q, d).astype(float).round(6).tolist()
    [[1.0, 0.6], [0.5, 0.8]]
    """
    if not queries or not docs:
        return np.zeros((len(queries), len(docs)), dtype=np.float32)
    _check(queries, "queries")
    _check(docs, "docs")
    qv = np.concatenate(queries).astype(np.float32, copy=False)  # (tq, dim)
    counts = np.array([q.shape[0] for q in queries])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty((len(queries), len(docs)), dtype=np.float32)
    doc_len = max(d.shape[0] for d in docs)
    step = max(1, _BLOCK // max(1, doc_len * qv.shape[0]))
    for s in range(0, len(docs), step):
        d, dm = _pad(docs[s : s + step])
        sim = np.matmul(d, qv.T)  # (b, ld, tq)
        sim[~dm] = -np.inf
        best = sim.max(axis=1)  # (b, tq)
        out[:, s : s + step] = (np.add.reduceat(best, starts, axis=1) / counts).T
    return out


def maxsim_packed(
    query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, docs: np.ndarray
) -> np.ndarray:
    """MaxSim of one query against ``docs`` of a packed store.

    ``vectors`` holds every document's vectors back to back; document ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``. The rows of all ``docs`` are gathered at once, compared
    with the query in one product, and reduced per document segment.

    >>> store = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> maxsim_packed(np.array([[1.0, 0.0]]), store, np.array([0, 2, 3]), np.array([1, 0])).astype(float).round(6).tolist()
    [0.6, 1.0]
    """
    if query.ndim != 2 or query.shape[0] == 0:
        raise ValueError("query must be a non-empty (n_tokens, dim) array")
    if len(docs) == 0:
        return np.zeros(0, dtype=np.float32)
    starts = offsets[docs]
    lengths = offsets[docs + 1] - starts
    if (lengths <= 0).any():
        raise ValueError("every document needs at least one vector")
    seg = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = segment_rows(starts, lengths)
    sims = query.astype(np.float32) @ np.asarray(vectors[rows], dtype=np.float32).T  # (lq, total)
    best = np.maximum.reduceat(sims, seg, axis=1)  # (lq, n_docs)
    return best.mean(axis=0).astype(np.float32)
