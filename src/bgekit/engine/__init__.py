"""The batching engine shared by every model kind."""

from bgekit.engine.batching import TokenBatch, pad_batch, plan_batches
from bgekit.engine.device import resolve_device, resolve_dtype
from bgekit.engine.engine import Engine, EngineConfig, Runner, is_out_of_memory

__all__ = [
    "Engine",
    "EngineConfig",
    "Runner",
    "TokenBatch",
    "is_out_of_memory",
    "pad_batch",
    "plan_batches",
    "resolve_device",
    "resolve_dtype",
]
