"""Retrieve → rerank: the two-stage search RAG systems use."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from bgekit.errors import InputError
from bgekit.retrieval.exact import HybridConfig
from bgekit.types import Hit

if TYPE_CHECKING:
    from bgekit.index import Index
    from bgekit.index.store import SearchMode
    from bgekit.models import Embedder, Reranker


class Pipeline:
    """Retrieve ``retrieve`` documents per query from ``index``, rescore them with
    ``reranker`` (when given), return the best ``k``. Each hit keeps every stage's scores:
    the index's modes, ``"retrieval"`` (the fused first-stage score) and ``"rerank"``."""

    def __init__(
        self,
        embedder: Embedder | None,
        index: Index,
        reranker: Reranker | None = None,
        *,
        retrieve: int = 100,
        mode: SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
    ):
        from bgekit.index.store import model_fingerprint

        if embedder is not None and model_fingerprint(embedder) != model_fingerprint(index.embedder):
            raise InputError(f"the index was built with {index.embedder.info.name}, not {embedder.info.name}")
        if retrieve < 1:
            raise InputError(f"retrieve must be at least 1, got {retrieve}")
        self.index = index
        self.reranker = reranker
        self.retrieve = retrieve
        self.mode = mode
        self.hybrid = hybrid

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        depth = max(k, self.retrieve) if self.reranker is not None else k
        first = self.index.search(queries, depth, mode=self.mode, hybrid=self.hybrid)
        if self.reranker is None:
            return [
                [dataclasses.replace(h, scores={**h.scores, "retrieval": h.score}) for h in hits]
                for hits in first
            ]
        pairs = [
            (q, f"{h.title} {h.text}".strip()) for q, hits in zip(queries, first, strict=True) for h in hits
        ]
        scores = self.reranker.score(pairs) if pairs else np.zeros(0, np.float32)
        out = []
        pos = 0
        for hits in first:
            s = scores[pos : pos + len(hits)]
            pos += len(hits)
            ranked = [
                dataclasses.replace(
                    h, score=float(v), scores={**h.scores, "retrieval": h.score, "rerank": float(v)}
                )
                for h, v in zip(hits, s, strict=True)
            ]
            ranked.sort(key=lambda h: -h.score)
            out.append(ranked[:k])
        return out
