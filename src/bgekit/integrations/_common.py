"""What every framework component shares: hits as plain records, and reranking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bgekit.index import Index
from bgekit.models import Reranker
from bgekit.retrieval import HybridConfig, Pipeline
from bgekit.types import Hit, SearchMode


def search_hits(
    index: Index,
    query: str,
    *,
    k: int,
    mode: SearchMode,
    hybrid: HybridConfig | None,
    reranker: Reranker | None,
    retrieve: int,
) -> list[Hit]:
    """The ``k`` best documents for ``query``: the index's search, reranked when a
    reranker is given (the :class:`~bgekit.Pipeline` the library uses)."""
    pipe = Pipeline(None, index, reranker, retrieve=retrieve, mode=mode, hybrid=hybrid)
    return pipe.search([query], k)[0]


def hit_metadata(hit: Hit) -> dict[str, Any]:
    """A hit's metadata for a framework document: the document's own metadata, then its id,
    title, best chunk, final score and every mode's score."""
    return {
        **hit.metadata,
        "id": hit.id,
        "title": hit.title,
        "chunk": hit.chunk,
        "score": hit.score,
        "scores": dict(hit.scores),
    }


def rerank_order(
    reranker: Reranker, query: str, texts: Sequence[str], top_n: int | None
) -> list[tuple[int, float]]:
    """(position, score) of the ``top_n`` best texts for ``query``, best first."""
    if not texts:
        return []
    return [(r.index, r.score) for r in reranker.rerank(query, list(texts), top_k=top_n)]
