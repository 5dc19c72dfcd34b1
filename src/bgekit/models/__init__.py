"""Model loading and the model kinds: embedders and rerankers."""

from bgekit.models.embedder import Embedder, EmbedderSettings
from bgekit.models.registry import KNOWN_MODELS
from bgekit.models.reranker import Reranker

__all__ = ["KNOWN_MODELS", "Embedder", "EmbedderSettings", "Reranker"]
