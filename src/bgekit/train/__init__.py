"""Fine-tuning: hard-negative mining, teacher scores, embedder (dense and BGE-M3 unified)
and reranker training on the transformers Trainer, and model merging.

Importing this package loads no training stack; transformers' Trainer is imported when a
run starts.
"""

from bgekit.train.data import (
    TrainExample,
    beir_train_examples,
    load_train_data,
    sample_group,
    write_train_data,
)
from bgekit.train.merge import merge_models
from bgekit.train.mining import add_teacher_scores, mine_hard_negatives
from bgekit.train.trainer import (
    EmbedderTrainConfig,
    RerankerTrainConfig,
    TrainConfig,
    TrainResult,
    train_embedder,
    train_reranker,
)

__all__ = [
    "EmbedderTrainConfig",
    "RerankerTrainConfig",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "add_teacher_scores",
    "beir_train_examples",
    "load_train_data",
    "merge_models",
    "mine_hard_negatives",
    "sample_group",
    "train_embedder",
    "train_reranker",
    "write_train_data",
]
