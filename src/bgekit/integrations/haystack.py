"""Haystack components (``pip install 'bgekit[haystack]'``): text and document embedders and
a ranker, as ``@component`` classes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from haystack import Document, component

from bgekit.integrations._common import rerank_order
from bgekit.models import Embedder, Reranker

__all__ = ["BgeDocumentEmbedder", "BgeRanker", "BgeTextEmbedder"]


@component
class BgeTextEmbedder:
    """Embeds a query text (with the model's query instruction)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        dense = self.embedder.encode_queries([text]).dense
        assert dense is not None
        return {"embedding": [float(x) for x in dense[0]]}


@component
class BgeDocumentEmbedder:
    """Embeds documents (their content; no instruction), setting ``Document.embedding``."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        dense = self.embedder.encode_corpus([d.content or "" for d in documents]).dense if documents else None
        out = (
            [replace(d, embedding=[float(x) for x in dense[i]]) for i, d in enumerate(documents)]
            if dense is not None
            else []
        )
        return {"documents": out}


@component
class BgeRanker:
    """Reranks documents for a query with a bgekit :class:`~bgekit.Reranker`: the ``top_k``
    best, best first, ``Document.score`` set."""

    def __init__(self, reranker: Reranker, top_k: int | None = 10):
        self.reranker = reranker
        self.top_k = top_k

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, Any]:
        order = rerank_order(self.reranker, query, [d.content or "" for d in documents], top_k or self.top_k)
        return {"documents": [replace(documents[i], score=score) for i, score in order]}
