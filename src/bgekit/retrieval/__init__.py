"""Retrieval: the one search core over encoded rows (every mode, hybrids), BM25, and the
retrieve → rerank stage."""

from bgekit.retrieval.bm25 import Bm25
from bgekit.retrieval.core import (
    DEFAULT_CANDIDATES,
    HybridConfig,
    SearchPlan,
    check_mode,
    chunk_depth,
    query_outputs,
    scorers_for,
    search,
    top_k,
)
from bgekit.retrieval.corpus import Corpus, Hnsw, available_scorers
from bgekit.retrieval.dense_store import DenseStore
from bgekit.retrieval.filters import Condition, Filter, FilterSpec, parse_condition
from bgekit.retrieval.pipeline import Pipeline

__all__ = [
    "DEFAULT_CANDIDATES",
    "Bm25",
    "Condition",
    "Corpus",
    "DenseStore",
    "Filter",
    "FilterSpec",
    "Hnsw",
    "HybridConfig",
    "Pipeline",
    "SearchPlan",
    "available_scorers",
    "check_mode",
    "chunk_depth",
    "parse_condition",
    "query_outputs",
    "scorers_for",
    "search",
    "top_k",
]
