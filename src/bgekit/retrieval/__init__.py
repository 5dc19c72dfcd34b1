"""Retrieval: exact search over encoded corpora in every mode, BM25, and hybrids."""

from bgekit.retrieval.bm25 import Bm25
from bgekit.retrieval.exact import HybridConfig, search, search_dense, search_sparse, top_k

__all__ = ["Bm25", "HybridConfig", "search", "search_dense", "search_sparse", "top_k"]
