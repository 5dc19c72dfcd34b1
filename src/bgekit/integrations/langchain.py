"""LangChain components (``pip install 'bgekit[langchain]'``): an ``Embeddings``, a
``BaseRetriever`` over a bgekit :class:`~bgekit.Index` and a ``BaseDocumentCompressor``
that reranks.

    from bgekit.integrations.langchain import BgeEmbeddings, BgeRetriever, BgeReranker
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from bgekit.index import Index
from bgekit.integrations._common import hit_metadata, rerank_order, search_hits
from bgekit.models import Embedder, Reranker
from bgekit.retrieval import HybridConfig
from bgekit.types import SearchMode

__all__ = ["BgeEmbeddings", "BgeReranker", "BgeRetriever"]


class BgeEmbeddings(Embeddings):
    """Dense vectors from a bgekit :class:`~bgekit.Embedder`; queries get the model's query
    instruction (``embed_query`` only), documents none."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        dense = self.embedder.encode_corpus(texts).dense
        return [] if dense is None else dense.tolist()

    def embed_query(self, text: str) -> list[float]:
        dense = self.embedder.encode_queries([text]).dense
        assert dense is not None
        return [float(x) for x in dense[0]]


class BgeRetriever(BaseRetriever):
    """Searches a bgekit :class:`~bgekit.Index` in any mode or hybrid, optionally reranked;
    each ``Document`` carries the hit's metadata, id, title, chunk and scores."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Index
    k: int = 4
    mode: SearchMode = "hybrid"
    hybrid: HybridConfig | None = None
    reranker: Reranker | None = None
    rerank_top: int = 100

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = search_hits(
            self.index,
            query,
            k=self.k,
            mode=self.mode,
            hybrid=self.hybrid,
            reranker=self.reranker,
            retrieve=self.rerank_top,
        )
        return [Document(page_content=h.text, metadata=hit_metadata(h), id=h.id) for h in hits]


class BgeReranker(BaseDocumentCompressor):
    """Reranks documents with a bgekit :class:`~bgekit.Reranker`: the ``top_n`` best, each
    with ``metadata["relevance_score"]``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Reranker
    top_n: int | None = 3

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        order = rerank_order(self.reranker, query, [d.page_content for d in documents], self.top_n)
        out = []
        for i, score in order:
            d = documents[i]
            meta: dict[str, Any] = {**d.metadata, "relevance_score": score}
            out.append(Document(page_content=d.page_content, metadata=meta, id=d.id))
        return out
