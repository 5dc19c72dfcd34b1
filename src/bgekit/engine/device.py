"""Device and precision choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bgekit.engine.cpu import CpuFeatures, cpu_features
from bgekit.errors import BgekitError

DType = Literal["auto", "float32", "float16", "bfloat16", "int8"]
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16", "int8")
MatmulKind = Literal["float32", "bfloat16", "int8"]
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


@dataclass(frozen=True)
class Precision:
    """How one model replica computes.

    ``dtype`` is what its parameters and activations are stored in; ``matmul`` is the
    kind of the CPU linear-layer kernels (``None``: plain products in ``dtype``).
    CPU paths keep fp32 storage and change only the matrix products: ``"bfloat16"``
    multiplies bf16-rounded inputs with fp32 accumulation while layer norms, softmax,
    residual adds, pooling and the output heads stay fp32; ``"int8"`` quantises the
    linear layers (weights per output channel, activations per token at run time, both
    smoothed with ranges calibrated at load) but for the FFN output, which stays bf16 (fp32
    on CPUs without bf16 instructions).
    ``check`` says the choice was automatic and is confirmed against fp32 at load.
    """

    dtype: torch.dtype
    matmul: MatmulKind | None
    reason: str
    check: bool = False

    @property
    def label(self) -> str:
        if self.matmul == "bfloat16":
            return "bfloat16 matmuls (fp32 elsewhere)"
        if self.matmul == "int8":
            return "int8 linear layers but the FFN output (smoothed, per-token activations)"
        return str(self.dtype).removeprefix("torch.")


def resolve_precision(dtype: DType, device: torch.device, cpu: CpuFeatures | None = None) -> Precision:
    """The precision a replica on ``device`` runs at for the ``dtype`` asked for.

    ``"auto"``: fp16 on CUDA (as the reference does); on a CPU with bf16 matrix
    instructions (AMX-BF16 or AVX512-BF16) bf16 matmuls, confirmed against fp32 when the
    model loads; fp32 otherwise. ``"float32"`` is exact fp32 everywhere. ``"int8"`` is a
    CPU path and only runs when asked for.
    """
    if dtype not in DTYPES:
        raise BgekitError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if device.type != "cpu":
        if dtype == "int8":
            raise BgekitError(f"dtype int8 is a CPU path; on {device} use float16 or bfloat16")
        if dtype == "auto":
            if device.type == "cuda":
                return Precision(torch.float16, None, "auto on CUDA: float16, as the reference runs")
            return Precision(torch.float32, None, f"auto on {device.type}: float32")
        return Precision(_TORCH_DTYPES[dtype], None, "asked for")
    cpu = cpu or cpu_features()
    if dtype == "float32":
        return Precision(torch.float32, "float32", "asked for")
    if dtype == "float16":
        raise BgekitError("dtype float16 is for GPUs; on the CPU use bfloat16, int8 or float32")
    if dtype == "int8":
        why = f"asked for; {cpu.int8} instructions" if cpu.int8 else "asked for; no VNNI/AMX-INT8 (slow)"
        return Precision(torch.float32, "int8", why)
    bf16 = cpu.bf16
    if dtype == "bfloat16":
        if bf16 is None:
            raise BgekitError(
                f"dtype bfloat16 on the CPU needs AMX-BF16 or AVX512-BF16, and this CPU "
                f"({cpu.model}) has neither; use float32"
            )
        return Precision(torch.float32, "bfloat16", f"asked for; {bf16} instructions")
    if bf16 is None:
        return Precision(torch.float32, "float32", "auto: this CPU has no bf16 matrix instructions")
    return Precision(torch.float32, "bfloat16", f"auto: this CPU has {bf16}", check=True)
