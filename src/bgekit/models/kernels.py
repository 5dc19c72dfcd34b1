"""CPU linear-layer kernels in three precisions, and switching a model between them.

- ``"float32"``: oneDNN's linear (PyTorch's kernel for compiled CPU graphs, GELU fused)
  where this torch build has it and it agrees with ``F.linear``; exact fp32.
- ``"bfloat16"``: the input rounded to bf16, multiplied by bf16 weights with fp32
  accumulation (oneDNN: AMX-BF16 tiles or AVX512-BF16 dot products), GELU applied before
  the result is rounded to bf16. Callers add the result to their fp32 residual stream, so
  only the matrix products lose precision.
- ``"int8"``: weights quantised per output channel (symmetric), activations per tensor
  at run time (PyTorch's dynamic quantised linear on oneDNN: AMX-INT8 / VNNI).

Kernels copy the weights they need when built; the fp32 parameters stay in place (the
float32 kernel reads them live), so a model can switch back and forth.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine import TokenBatch
from bgekit.engine.cpu import cpu_features
from bgekit.engine.device import MatmulKind
from bgekit.errors import BgekitError

Kernel = Callable[..., torch.Tensor]


@functools.cache
def onednn_linear_ok() -> bool:
    """oneDNN's fused linear exists in this torch build and agrees with ``F.linear``."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((7, 24), (40, 24), (40,)))
        fast = op(x, w, b, "gelu", [], "none")
        return bool(torch.allclose(fast, F.gelu(F.linear(x, w, b)), atol=1e-5, rtol=1e-5))
    except RuntimeError:
        return False


def _onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    attr, algorithm = ("gelu", "none") if gelu else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)


def plain_linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """``layer(x)`` (then exact GELU when asked) in the input's dtype; oneDNN for fp32 on CPU."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and onednn_linear_ok():
        return _onednn(x, layer.weight, layer.bias, gelu)
    y = F.linear(x, layer.weight, layer.bias)
    return F.gelu(y) if gelu else y


class Float32Kernel:
    def __init__(self, layer: nn.Linear):
        self.layer = layer

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        return plain_linear(x.float(), self.layer, gelu)


class Bfloat16Kernel:
    """Returns bf16; the products accumulate in fp32 inside the kernel."""

    def __init__(self, layer: nn.Linear):
        self.weight = layer.weight.detach().to(torch.bfloat16).contiguous()
        self.bias = None if layer.bias is None else layer.bias.detach().float().contiguous()
        self.onednn = onednn_linear_ok()

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        xb = x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16)
        if self.onednn:
            return _onednn(xb, self.weight, self.bias, gelu)
        y = F.linear(xb, self.weight).float()
        if self.bias is not None:
            y = y + self.bias
        return (F.gelu(y) if gelu else y).to(torch.bfloat16)


@contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@functools.cache
def _int8_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for name in ("onednn", "x86", "fbgemm"):
        if name in engines:
            return name
    raise BgekitError("this torch build has no int8 linear kernels (no onednn/x86/fbgemm engine)")


class Int8Kernel:
    """Returns fp32: int8 weights per output channel, activations quantised per call."""

    def __init__(self, layer: nn.Linear):
        w = layer.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        bias = None if layer.bias is None else layer.bias.detach().float()
        with warnings.catch_warnings():  # quantised tensors are flagged as deprecated in torch 2.13
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
            with _quantized_engine(_int8_engine()):
                self.packed = torch.ops.quantized.linear_prepack(qw, bias)
        # 7-bit activations avoid the saturation of AVX2's int8 products; VNNI/AMX need none.
        self.reduce_range = cpu_features().int8 is None

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self.packed, self.reduce_range)
        return F.gelu(y) if gelu else y


def make_kernel(layer: nn.Linear, kind: MatmulKind) -> Kernel:
    """A kernel computing ``layer`` in ``kind`` on the CPU."""
    if kind == "bfloat16":
        return Bfloat16Kernel(layer)
    if kind == "int8":
        return Int8Kernel(layer)
    return Float32Kernel(layer)


class _InDtype:
    """A Linear's forward through a kernel, answering in the input's dtype."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x).to(x.dtype)


def patch_linears(root: nn.Module, kind: MatmulKind, skip: tuple[str, ...] = ()) -> int:
    """Run every ``nn.Linear`` under ``root`` (except names starting with ``skip``) through
    ``kind`` kernels; ``"float32"`` restores their own forward. Returns how many changed."""
    count = 0
    for name, module in root.named_modules():
        if not isinstance(module, nn.Linear) or (skip and name.startswith(skip)):
            continue
        module.__dict__.pop("forward", None)
        if kind != "float32":
            module.forward = _InDtype(make_kernel(module, kind))  # type: ignore[method-assign,assignment]
        count += 1
    return count


@runtime_checkable
class FastPath(Protocol):
    """A backbone whose CPU matrix products can switch precision (see :mod:`kernels`)."""

    def set_matmul(self, kind: MatmulKind) -> int:
        """Switch kernels; returns how many linear layers run in ``kind``."""
        ...

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        """Last hidden states as flat rows ``(total tokens, dim)``: what the fp32 check compares."""
        ...


def fast_paths(module: nn.Module) -> list[FastPath]:
    """The switchable backbones inside ``module``, outermost only: a backbone that holds
    another (BGE-Visualized's holds a text encoder) switches and checks it itself."""
    out: list[FastPath] = []
    owners: list[str] = []
    for name, m in module.named_modules():
        if any(name.startswith(owner) for owner in owners):
            continue
        if isinstance(m, FastPath):
            out.append(m)
            owners.append(f"{name}." if name else "")
    return out
