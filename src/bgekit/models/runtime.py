"""Loading transformers weights and placing replicas on devices."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bgekit.engine import Engine, EngineConfig, resolve_device, resolve_dtype
from bgekit.errors import ModelFormatError
from bgekit.types import ModelInfo

if TYPE_CHECKING:
    from typing_extensions import Self

    from bgekit.models.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


@contextmanager
def quiet_hf_bars() -> Iterator[None]:
    """No transformers progress bar inside the block (a bar per load or save is noise;
    bgekit shows its own on long work)."""
    from transformers.utils import logging as hf_logging

    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not bars_were_off:
            hf_logging.enable_progress_bar()


def load_transformers_model(path: Path, *, cross_encoder: bool) -> nn.Module:
    """The encoder (or sequence-classification model) in fp32 on the CPU, with SDPA attention."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if cross_encoder else AutoModel
    try:
        with quiet_hf_bars():
            model = cls.from_pretrained(str(path), attn_implementation="sdpa", dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFormatError(f"cannot load model weights from {path}: {e}") from None
    return model.eval()


def place_replicas(module: nn.Module, config: EngineConfig) -> list[tuple[nn.Module, torch.device]]:
    """One replica per configured device, each in that device's dtype."""
    names = config.devices or (config.device,)
    devices = [resolve_device(d) for d in names]
    if len(set(devices)) != len(devices):
        raise ModelFormatError(f"devices listed twice: {list(names)}")
    out = []
    for i, dev in enumerate(devices):
        replica = module if i == 0 else copy.deepcopy(module)
        replica.to(device=dev, dtype=resolve_dtype(config.dtype, dev))
        replica.eval()
        out.append((replica, dev))
    logger.debug("model placed on %s", ", ".join(str(d) for d in devices))
    return out


class LoadedModel:
    """What every model kind holds: its info, tokenizer, engine and device replicas."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: TextTokenizer,
        info: ModelInfo,
        engine: EngineConfig | None = None,
    ):
        self.info = info
        self.tokenizer = tokenizer
        self.engine = Engine(engine or EngineConfig())
        self._replicas = place_replicas(model, self.engine.config)

    def torch_module(self) -> nn.Module:
        """The first replica's torch module (what training and inspection work on)."""
        if not self._replicas:
            raise ModelFormatError(f"{self.info.name} was closed")
        return self._replicas[0][0]

    def close(self) -> None:
        """Drop the model replicas (and their device memory)."""
        self._replicas = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
