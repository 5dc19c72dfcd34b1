"""Retrieval: exact search over encoded corpora in every mode, BM25, and hybrids."""

from bgekit.retrieval.bm25 import Bm25
from bgekit.retrieval.exact import HybridConfig, search, search_dense, search_sparse, top_k
from bgekit.retrieval.pipeline import Pipeline

__all__ = ["Bm25", "HybridConfig", "Pipeline", "search", "search_dense", "search_sparse", "top_k"]
