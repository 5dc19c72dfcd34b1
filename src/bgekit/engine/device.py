"""Device and dtype choice."""

from __future__ import annotations

from typing import Literal

import torch

from bgekit.errors import BgekitError

DType = Literal["auto", "float32", "float16", "bfloat16"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is checked and used as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise BgekitError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BgekitError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """fp32 on CPU; ``"auto"`` is fp16 on CUDA (as the reference does) and fp32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise BgekitError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(_DTYPES)}")
    if device.type == "cpu" and dtype != "float32":
        raise BgekitError(f"dtype {dtype} is for GPUs; on the CPU bgekit runs float32")
    return _DTYPES[dtype]
