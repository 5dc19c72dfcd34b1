"""The batching engine shared by every model kind."""

from bgekit.engine.batching import PaddedView, TokenBatch, TokenCount, pad_batch, plan_batches
from bgekit.engine.cpu import CpuFeatures, cpu_features
from bgekit.engine.device import DTYPES, MatmulKind, Precision, resolve_device, resolve_precision
from bgekit.engine.engine import Engine, EngineConfig, Runner, is_out_of_memory

__all__ = [
    "DTYPES",
    "CpuFeatures",
    "Engine",
    "EngineConfig",
    "MatmulKind",
    "PaddedView",
    "Precision",
    "Runner",
    "TokenBatch",
    "TokenCount",
    "cpu_features",
    "is_out_of_memory",
    "pad_batch",
    "plan_batches",
    "resolve_device",
    "resolve_precision",
]
