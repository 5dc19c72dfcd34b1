"""CPU linear-layer kernels in three precisions, and switching a model between them.

- ``"float32"``: oneDNN's linear (PyTorch's kernel for compiled CPU graphs, GELU fused)
  where this torch build has it and it agrees with ``F.linear``; exact fp32.
- ``"bfloat16"``: the input rounded to bf16, multiplied by bf16 weights with fp32
  accumulation (oneDNN: AMX-BF16 tiles or AVX512-BF16 dot products), GELU applied before
  the result is rounded to bf16. Callers add the result to their fp32 residual stream, so
  only the matrix products lose precision.
- ``"int8"``: weights quantised per output channel (symmetric), activations per token at
  run time (asymmetric), optionally smoothed (SmoothQuant) with factors from calibration;
  the integer products on oneDNN (AMX-INT8 / VNNI).

Kernels copy the weights they need when built; the fp32 parameters stay in place (the
float32 kernel reads them live), so a model can switch back and forth.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine import TokenBatch
from bgekit.engine.cpu import cpu_features
from bgekit.engine.device import MatmulKind

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


# SmoothQuant's migration strength: the share of an input channel's range moved into the
# weights. On all-MiniLM-L6-v2 with per-token activations 0.5 gave the highest lowest
# cosine to fp32 (0.99948 on 500 SciFact texts; 0.65: 0.99937, 0.75: 0.99917, 0.85: 0.99875).
SMOOTHING_ALPHA = 0.5


def smoothing(input_max: torch.Tensor, weight: torch.Tensor, alpha: float = SMOOTHING_ALPHA) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s = max|x|^a / max|w|^(1-a)``: the layer
    computes ``(x / s) @ (w * s)^T``, the same product with the activations' outlier
    channels moved into the weights (which are quantised per output channel)."""
    w_max = weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
    return (input_max.float().clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)


def quantize_rows(x: torch.Tensor, levels: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of fp32 ``x`` to ``levels`` steps between its own minimum and maximum (0
    always exact): ``x ≈ scale * (q + levels / 2 - zero)`` with int8 ``q`` in
    ``[-levels / 2, levels / 2)``. Returns ``q, scale, zero``."""
    half = levels // 2
    # two reductions: torch.aminmax over rows is 5x slower than amin + amax (torch 2.13)
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    scale = ((hi.clamp(min=0) - lo.clamp(max=0)) / (levels - 1)).clamp(min=1e-12)
    zero = (-lo.clamp(max=0) / scale).round_()
    q = (x / scale).round_().add_(zero - half).clamp_(-half, half - 1).to(torch.int8)
    return q, scale, zero


class Int8Kernel:
    """Returns fp32. Weights are int8 per output channel (symmetric); each input row is
    quantised to int8 at run time with its own scale and zero point (per token), and the
    integer product runs on oneDNN (AMX-INT8 / VNNI). ``smooth`` (SmoothQuant factors
    from calibration, see :func:`smoothing`) divides the input and multiplies the weights."""

    def __init__(self, layer: nn.Linear, smooth: torch.Tensor | None = None):
        w = layer.weight.detach().float()
        self.inv_smooth = None if smooth is None else (1 / smooth.float()).contiguous()
        if smooth is not None:
            w = w * smooth.float()
        self.w_scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = (w / self.w_scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        self.weight = q.t()  # (in, out), column-major: the layout the integer product reads
        # sum over inputs of each output's weights: undoes the zero points' shift
        self.col_sum = q.sum(dim=1, dtype=torch.int32).float()
        self.bias = None if layer.bias is None else layer.bias.detach().float()
        # 7-bit activations avoid the saturation of AVX2's int8 products; VNNI/AMX need none.
        self.levels = 256 if cpu_features().int8 is not None else 128

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        x = x.float()
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        q, scale, zero = quantize_rows(x, self.levels)
        acc = torch._int_mm(q, self.weight).float()
        y = acc.addcmul_(self.levels // 2 - zero, self.col_sum).mul_(scale).mul_(self.w_scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        return F.gelu(y) if gelu else y


def make_kernel(layer: nn.Linear, kind: MatmulKind, smooth: torch.Tensor | None = None) -> Kernel:
    """A kernel computing ``layer`` in ``kind`` on the CPU (``smooth``: int8 only)."""
    if kind == "bfloat16":
        return Bfloat16Kernel(layer)
    if kind == "int8":
        return Int8Kernel(layer, smooth)
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


def kernel_name(kernel: object) -> str:
    """What computes a kernel's products, e.g. ``"bf16 (oneDNN linear, AMX-BF16)"``."""
    cpu = cpu_features()
    if isinstance(kernel, Float32Kernel):
        return "fp32 (oneDNN linear)" if onednn_linear_ok() else "fp32 (torch linear)"
    if isinstance(kernel, Bfloat16Kernel):
        where = "oneDNN linear" if kernel.onednn else "torch linear"
        return f"bf16 ({where}, {cpu.bf16 or 'no bf16 instructions'})"
    if isinstance(kernel, Int8Kernel):
        how = "smoothed" if kernel.inv_smooth is not None else "not smoothed"
        bits = "8-bit" if kernel.levels == 256 else "7-bit"
        return f"int8 (torch._int_mm, {cpu.int8 or 'no VNNI/AMX-INT8'}; {how}, {bits} per-token activations)"
    return type(kernel).__name__


def kernel_counts(module: nn.Module) -> dict[str, int]:
    """How many linear layers under ``module`` run in each kind of kernel (:func:`kernel_name`);
    layers with no kernel (a GPU replica, a model built for training) are not counted."""
    counts: dict[str, int] = {}
    for m in module.modules():
        found: list[object] = []
        table = getattr(m, "kernels", None)
        if isinstance(table, dict):
            found += table.values()
        single = getattr(m, "proj_kernel", None)
        if single is not None:
            found.append(single)
        patched = m.__dict__.get("forward")
        if isinstance(patched, _InDtype):
            found.append(patched.kernel)
        for kernel in found:
            name = kernel_name(kernel)
            counts[name] = counts.get(name, 0) + 1
    return counts


@runtime_checkable
class FastPath(Protocol):
    """A backbone whose CPU matrix products can switch precision (see :mod:`kernels`)."""

    def set_matmul(self, kind: MatmulKind) -> int:
        """Switch kernels; returns how many linear layers run in ``kind``."""
        ...

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        """Last hidden states as flat rows ``(total tokens, dim)``: what the fp32 check compares."""
        ...


@runtime_checkable
class Calibrated(Protocol):
    """A backbone whose int8 kernels are smoothed with activation ranges it records."""

    def calibrate(self, batch: TokenBatch) -> None:
        """Record each linear layer's largest input per channel over ``batch``; int8
        kernels built afterwards (``set_matmul("int8")``) are smoothed with them."""
        ...


class RangeRecorder:
    """A kernel that records the largest absolute input of each channel it sees."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.input_max: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        seen = x.detach().float().abs().amax(dim=0)
        self.input_max = seen if self.input_max is None else torch.maximum(self.input_max, seen)
        return self.kernel(x, gelu)


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
