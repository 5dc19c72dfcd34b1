"""bgekit: a fast toolkit for the BGE family of retrieval models."""

from bgekit.engine import EngineConfig
from bgekit.errors import (
    BgekitError,
    InputError,
    MissingHeadError,
    ModelFormatError,
    ModelNotFoundError,
)
from bgekit.images import Composed, ImageError, ImageInput, ImageLimits, ImageTooLargeError
from bgekit.index import Document, Index, IndexConfig
from bgekit.models import KNOWN_MODELS, Embedder, EmbedderSettings, LLMReranker, Reranker
from bgekit.retrieval import HybridConfig, Pipeline
from bgekit.scoring import (
    dense_pair_scores,
    dense_scores,
    maxsim_packed,
    maxsim_pair_scores,
    maxsim_scores,
    reciprocal_rank_fusion,
    sparse_pair_scores,
    sparse_scores,
    weighted_fusion,
)
from bgekit.types import Encoded, Hit, ModelInfo, PairScores, Ranking, RerankResult, SparseVec

__version__ = "0.1.0"

__all__ = [
    "KNOWN_MODELS",
    "BgekitError",
    "Composed",
    "Document",
    "Embedder",
    "EmbedderSettings",
    "Encoded",
    "EngineConfig",
    "Hit",
    "HybridConfig",
    "ImageError",
    "ImageInput",
    "ImageLimits",
    "ImageTooLargeError",
    "Index",
    "IndexConfig",
    "InputError",
    "LLMReranker",
    "MissingHeadError",
    "ModelFormatError",
    "ModelInfo",
    "ModelNotFoundError",
    "PairScores",
    "Pipeline",
    "Ranking",
    "RerankResult",
    "Reranker",
    "SparseVec",
    "__version__",
    "dense_pair_scores",
    "dense_scores",
    "maxsim_packed",
    "maxsim_pair_scores",
    "maxsim_scores",
    "reciprocal_rank_fusion",
    "sparse_pair_scores",
    "sparse_scores",
    "weighted_fusion",
]
