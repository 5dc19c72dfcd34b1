"""bgekit: a fast toolkit for the BGE family of retrieval models."""

from bgekit.engine import EngineConfig
from bgekit.errors import (
    BgekitError,
    InputError,
    MissingHeadError,
    ModelFormatError,
    ModelNotFoundError,
)
from bgekit.models import KNOWN_MODELS, Embedder, EmbedderSettings, Reranker
from bgekit.scoring import (
    dense_pair_scores,
    dense_scores,
    maxsim_pair_scores,
    maxsim_scores,
    reciprocal_rank_fusion,
    sparse_pair_scores,
    sparse_scores,
    weighted_fusion,
)
from bgekit.types import Encoded, ModelInfo, PairScores, RerankResult, SparseVec

__version__ = "0.1.0"

__all__ = [
    "KNOWN_MODELS",
    "BgekitError",
    "Embedder",
    "EmbedderSettings",
    "Encoded",
    "EngineConfig",
    "InputError",
    "MissingHeadError",
    "ModelFormatError",
    "ModelInfo",
    "ModelNotFoundError",
    "PairScores",
    "RerankResult",
    "Reranker",
    "SparseVec",
    "__version__",
    "dense_pair_scores",
    "dense_scores",
    "maxsim_pair_scores",
    "maxsim_scores",
    "reciprocal_rank_fusion",
    "sparse_pair_scores",
    "sparse_scores",
    "weighted_fusion",
]
