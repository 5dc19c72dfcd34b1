"""Retrieve → rerank: the one merge of a first stage with a reranker's scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bgekit.errors import InputError
from bgekit.types import Ranking

if TYPE_CHECKING:
    from bgekit.models import Reranker


def rerank_rankings(
    reranker: Reranker,
    queries: Sequence[str],
    rankings: Sequence[Ranking],
    passage: Callable[[int, int], str],
    top: int,
) -> list[Ranking]:
    """Each query's first ``top`` rows rescored by ``reranker`` on ``(query, passage(q, row))``
    and sorted by that score (ties keep first-stage order); rows below ``top`` follow in
    their first-stage order with scores below the head's lowest, so a ranking keeps its
    length (Recall@1000 stays comparable between stages). ``modes`` gains ``"retrieval"``
    (the first-stage score) and ``"rerank"`` (NaN below ``top``). All pairs of all queries
    go to the reranker in one call (one engine run)."""
    if top < 1:
        raise InputError(f"the rerank depth must be at least 1, got {top}")
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
        head = scores[pos : pos + n]
        pos += n
        order = np.concatenate([np.argsort(-head, kind="stable"), np.arange(n, len(r))]).astype(np.int64)
        floor = float(head.min()) if n else 0.0
        tail = floor - 1.0 - np.arange(len(r) - n, dtype=np.float32)
        final = np.concatenate([head, tail]).astype(np.float32)[order]
        rerank = np.concatenate([head, np.full(len(r) - n, np.nan, np.float32)]).astype(np.float32)[order]
        modes = {m: s[order] for m, s in r.modes.items()}
        modes |= {"retrieval": r.scores[order].astype(np.float32), "rerank": rerank}
        out.append(Ranking(r.indices[order], final, modes))
    return out
