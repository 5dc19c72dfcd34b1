"""Retrieve → rerank: the one merge of a first stage with a reranker's scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bgekit.errors import InputError
from bgekit.types import Ranking

if TYPE_CHECKING:
    from bgekit.models import Reranker


def standardized(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` (only centred when every value is the same)."""
    x = x.astype(np.float64)
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 0 else x - x.mean()


def fuse_stages(rerank: np.ndarray, retrieval: np.ndarray, weight: float) -> np.ndarray:
    """One query's rescored head: ``weight * z(rerank) + (1 - weight) * z(retrieval)``, each
    stage standardised over the head (their scales differ: logits against cosines);
    ``weight`` 1 is the reranker's own scores, unchanged."""
    if weight == 1.0:
        return rerank.astype(np.float32)
    return (weight * standardized(rerank) + (1 - weight) * standardized(retrieval)).astype(np.float32)


def check_rerank_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"the rerank weight is the reranker's share in [0, 1], got {weight}")


def rerank_rankings(
    reranker: Reranker,
    queries: Sequence[str],
    rankings: Sequence[Ranking],
    passage: Callable[[int, int], str],
    top: int,
    *,
    weight: float = 1.0,
) -> list[Ranking]:
    """Each query's first ``top`` rows rescored by ``reranker`` on ``(query, passage(q, row))``
    and sorted by that score — or, with ``weight`` below 1, by :func:`fuse_stages` of the
    reranker's and the first stage's scores (ties keep first-stage order); rows below ``top`` follow in
    their first-stage order with scores below the head's lowest, so a ranking keeps its
    length (Recall@1000 stays comparable between stages). ``modes`` gains ``"retrieval"``
    (the first-stage score) and ``"rerank"`` (NaN below ``top``). All pairs of all queries
    go to the reranker in one call (one engine run)."""
    if top < 1:
        raise InputError(f"the rerank depth must be at least 1, got {top}")
    check_rerank_weight(weight)
    if len(queries) != len(rankings):
        raise InputError(f"{len(queries)} queries but {len(rankings)} rankings")
    pairs = [
        (q, passage(qi, int(row)))
        for qi, (q, r) in enumerate(zip(queries, rankings, strict=True))
        for row in r.indices[:top]
    ]
    scores = reranker.score(pairs) if pairs else np.zeros(0, np.float32)
    out = []
    pos = 0
    for r in rankings:
        n = min(top, len(r))
        rescored = scores[pos : pos + n]
        head = fuse_stages(rescored, r.scores[:n], weight)
        pos += n
        order = np.concatenate([np.argsort(-head, kind="stable"), np.arange(n, len(r))]).astype(np.int64)
        floor = float(head.min()) if n else 0.0
        tail = floor - 1.0 - np.arange(len(r) - n, dtype=np.float32)
        final = np.concatenate([head, tail]).astype(np.float32)[order]
        rerank = np.concatenate([rescored, np.full(len(r) - n, np.nan, np.float32)]).astype(np.float32)[order]
        modes = {m: s[order] for m, s in r.modes.items()}
        modes |= {"retrieval": r.scores[order].astype(np.float32), "rerank": rerank}
        out.append(Ranking(r.indices[order], final, modes))
    return out
