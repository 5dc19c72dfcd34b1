"""Retrieve → rerank: the two-stage search RAG systems use (the library and ``/search``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bgekit.errors import InputError
from bgekit.images import Item, has_images
from bgekit.inputs import passage_text
from bgekit.retrieval.core import HybridConfig
from bgekit.retrieval.filters import FilterSpec
from bgekit.retrieval.rerank import check_rerank_weight, rerank_rankings
from bgekit.types import Hit, Ranking, SearchMode, TokenSeq

if TYPE_CHECKING:
    from bgekit.models import Embedder, Reranker


class Searchable(Protocol):
    """What a pipeline's first stage needs: an index (embedded or a vector database)."""

    @property
    def embedder(self) -> Embedder: ...

    def search(
        self,
        queries: Sequence[Item],
        k: int = 10,
        *,
        mode: SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
        tokens: Sequence[TokenSeq] | None = None,
        where: FilterSpec = None,
    ) -> list[list[Hit]]: ...


class Pipeline:
    """Retrieve ``retrieve`` documents per query from ``index``, rescore them with
    ``reranker`` (when given) on the text the index encoded (``title + " " + chunk``), return
    the best ``k``. Each hit keeps every stage's scores: the index's scorers,
    ``"retrieval"`` (the fused first-stage score) and ``"rerank"``; ``rerank_weight`` < 1
    orders by the two stages' scores fused (:func:`bgekit.retrieval.rerank.fuse_stages`)."""

    def __init__(
        self,
        embedder: Embedder | None,
        index: Searchable,
        reranker: Reranker | None = None,
        *,
        retrieve: int = 100,
        mode: SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
        rerank_weight: float = 1.0,
    ):
        from bgekit.models import model_fingerprint

        if embedder is not None and model_fingerprint(embedder) != model_fingerprint(index.embedder):
            raise InputError(f"the index was built with {index.embedder.info.name}, not {embedder.info.name}")
        if retrieve < 1:
            raise InputError(f"retrieve must be at least 1, got {retrieve}")
        check_rerank_weight(rerank_weight)
        self.rerank_weight = rerank_weight
        self.index = index
        self.reranker = reranker
        self.retrieve = retrieve
        self.mode = mode
        self.hybrid = hybrid

    def search(
        self,
        queries: Sequence[Item],
        k: int = 10,
        *,
        tokens: Sequence[TokenSeq] | None = None,
        where: FilterSpec = None,
    ) -> list[list[Hit]]:
        """The ``k`` best hits per query (texts; for an image model's index also images and
        image + text); ``tokens``: the queries already tokenised the way the index does
        (``Index.tokenize_queries``), not tokenised again; ``where``: a metadata filter
        (:class:`~bgekit.retrieval.Filter`), applied in the first stage."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if self.reranker is not None and has_images(queries):
            raise InputError("a reranker reads text; search image queries without one")
        depth = max(k, self.retrieve) if self.reranker is not None else k
        first = self.index.search(
            queries, depth, mode=self.mode, hybrid=self.hybrid, tokens=tokens, where=where
        )
        if self.reranker is None:
            return [
                [dataclasses.replace(h, scores={**h.scores, "retrieval": h.score}) for h in hits]
                for hits in first
            ]
        rankings = [
            Ranking(np.arange(len(hits), dtype=np.int64), np.array([h.score for h in hits], np.float32))
            for hits in first
        ]
        reranked = rerank_rankings(
            self.reranker,
            [q for q in queries if isinstance(q, str)],
            rankings,
            lambda qi, j: passage_text(first[qi][j].title, first[qi][j].text),
            self.retrieve,
            weight=self.rerank_weight,
        )
        out = []
        for hits, r in zip(first, reranked, strict=True):
            ranked = []
            for pos, j in enumerate(r.indices[:k].tolist()):
                h = hits[j]
                stage = {"retrieval": h.score}
                if not np.isnan(r.modes["rerank"][pos]):
                    stage["rerank"] = float(r.modes["rerank"][pos])
                ranked.append(
                    dataclasses.replace(h, score=float(r.scores[pos]), scores={**h.scores, **stage})
                )
            out.append(ranked)
        return out
