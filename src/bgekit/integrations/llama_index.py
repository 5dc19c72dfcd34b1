"""LlamaIndex components (``pip install 'bgekit[llamaindex]'``): a ``BaseEmbedding``, a
``BaseRetriever`` over a bgekit :class:`~bgekit.Index` and a ``BaseNodePostprocessor`` that
reranks."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from pydantic import ConfigDict, PrivateAttr

from bgekit.index import Index
from bgekit.integrations._common import hit_metadata, rerank_order, search_hits
from bgekit.models import Embedder, Reranker
from bgekit.retrieval import HybridConfig
from bgekit.types import SearchMode

__all__ = ["BgeEmbedding", "BgeRerank", "BgeRetriever"]


class BgeEmbedding(BaseEmbedding):
    """Dense vectors from a bgekit :class:`~bgekit.Embedder` (queries get its query
    instruction, texts none)."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder, **kwargs: Any):  # kwargs: BaseEmbedding's own fields
        super().__init__(model_name=embedder.info.name, **kwargs)
        self._embedder = embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        dense = self._embedder.encode_queries([query]).dense
        assert dense is not None
        return [float(x) for x in dense[0]]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        dense = self._embedder.encode_corpus(texts).dense
        return [] if dense is None else dense.tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


class BgeRetriever(BaseRetriever):
    """Searches a bgekit :class:`~bgekit.Index` in any mode or hybrid, optionally reranked;
    nodes carry the hit's text, id, metadata and score."""

    def __init__(
        self,
        index: Index,
        *,
        k: int = 4,
        mode: SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
        reranker: Reranker | None = None,
        rerank_top: int = 100,
    ):
        super().__init__()
        self.index, self.k, self.mode, self.hybrid = index, k, mode, hybrid
        self.reranker, self.rerank_top = reranker, rerank_top

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = search_hits(
            self.index,
            query_bundle.query_str,
            k=self.k,
            mode=self.mode,
            hybrid=self.hybrid,
            reranker=self.reranker,
            retrieve=self.rerank_top,
        )
        return [
            NodeWithScore(node=TextNode(text=h.text, id_=h.id, metadata=hit_metadata(h)), score=h.score)
            for h in hits
        ]


class BgeRerank(BaseNodePostprocessor):
    """Reranks nodes with a bgekit :class:`~bgekit.Reranker`: the ``top_n`` best, scored."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    top_n: int | None = 3
    _reranker: Reranker = PrivateAttr()

    def __init__(self, reranker: Reranker, top_n: int | None = 3):
        super().__init__()
        self.top_n = top_n
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "BgeRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("BgeRerank needs the query (query_bundle or query_str)")
        texts = [n.node.get_content() for n in nodes]
        order = rerank_order(self._reranker, query_bundle.query_str, texts, self.top_n)
        return [NodeWithScore(node=nodes[i].node, score=score) for i, score in order]
