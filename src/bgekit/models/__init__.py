"""Model loading and the model kinds: embedders, cross-encoder and LLM rerankers."""

from bgekit.models.embedder import Embedder, EmbedderSettings
from bgekit.models.fingerprint import model_fingerprint
from bgekit.models.llm_reranker import LLMReranker
from bgekit.models.registry import KNOWN_MODELS
from bgekit.models.reranker import Reranker, load_reranker

__all__ = [
    "KNOWN_MODELS",
    "Embedder",
    "EmbedderSettings",
    "LLMReranker",
    "Reranker",
    "load_reranker",
    "model_fingerprint",
]
