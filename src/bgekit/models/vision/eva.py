"""The EVA02-CLIP vision tower (BGE-Visualized's image encoder) on plain torch.

EVA02 is a pre-norm ViT with four changes from the original: 2-D rotary position
embeddings on the patch tokens (not the CLS token) in every attention layer, next to the
learned absolute ones; separate query / key / value projections with biases on the query
and value only; a LayerNorm on the attention output before its projection ("sub-LN"); and a
SwiGLU feed-forward (``silu(w1 x) * w2 x``) with a LayerNorm before ``w3``. LayerNorms use
eps 1e-6. BGE-Visualized reads the last block's output (before the final norm), so the
final norm and the CLIP head are not loaded.

Weights are read from the ``model_visual.visual.*`` tensors of the reference's state dict
(FlagEmbedding's ``research/visual_bge``, whose ``CustomCLIP`` keeps the tower under
``visual``). On CPUs the linear layers run through bgekit's kernels (see
:mod:`bgekit.models.kernels`); query, key and value are one fused product, as are ``w1``
and ``w2`` (same maths).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine.device import MatmulKind
from bgekit.errors import ModelFormatError
from bgekit.models.kernels import Kernel, make_kernel, plain_linear
from bgekit.models.loading import key_mismatch

# The tower's own keys that BGE-Visualized never runs (its final norm and CLIP head).
UNUSED_PARTS = ("norm.", "fc_norm.", "head.")
_LINEARS = ("qkv", "proj", "w12", "w3")


@dataclass(frozen=True)
class EvaConfig:
    """An EVA02 tower's shape. ``mlp_hidden`` is ``int(width * mlp_ratio)`` (2.6667 for
    EVA02-CLIP); rotary tables are interpolated from a ``pt_hw_seq_len`` grid to this one."""

    width: int
    layers: int
    patch: int
    image_size: int
    mlp_hidden: int
    head_width: int = 64
    pt_hw_seq_len: int = 16
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if min(self.width, self.layers, self.patch, self.image_size, self.mlp_hidden, self.head_width) < 1:
            raise ModelFormatError(f"an EVA tower's sizes must be positive: {self}")
        if self.width % self.head_width or self.head_width % 4:
            raise ModelFormatError(
                f"EVA width {self.width} is not heads of {self.head_width} (a multiple of 4, for 2-D rotary)"
            )
        if self.image_size % self.patch:
            raise ModelFormatError(
                f"EVA image size {self.image_size} is not a multiple of patch {self.patch}"
            )

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch

    @property
    def tokens(self) -> int:
        """Patch tokens per image (the CLS token not counted)."""
        return self.grid * self.grid

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, torch.Tensor],
        where: Path | str,
        prefix: str,
        head_width: int | None = None,
    ) -> EvaConfig:
        """The shape read from a state dict: width and patch from the patch convolution,
        image size from the absolute position table, layers from the blocks present, the
        feed-forward width from ``w1``, head width from the rotary table (else 64)."""
        what = "an EVA02 vision tower"

        def shape(name: str, ndim: int) -> tuple[int, ...]:
            t = state.get(prefix + name)
            if not isinstance(t, torch.Tensor):
                raise key_mismatch(where, what, missing=[prefix + name])
            if t.ndim != ndim:
                raise key_mismatch(where, what, wrong_shape=[f"{prefix}{name} {tuple(t.shape)}"])
            return tuple(int(n) for n in t.shape)

        width, channels, patch, patch_w = shape("patch_embed.proj.weight", 4)
        if channels != 3 or patch != patch_w:
            raise key_mismatch(
                where,
                what,
                wrong_shape=[f"{prefix}patch_embed.proj.weight {(width, channels, patch, patch_w)}"],
            )
        n_pos = shape("pos_embed", 3)[1] - 1
        grid = math.isqrt(max(n_pos, 0))
        if n_pos < 1 or grid * grid != n_pos:
            raise key_mismatch(
                where, what, wrong_shape=[f"{prefix}pos_embed (1 + {n_pos} tokens: not a square grid)"]
            )
        found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
        if not found:
            raise key_mismatch(where, what, missing=[f"{prefix}blocks.0.*"])
        gaps = sorted(set(range(max(found) + 1)) - found)
        if gaps:
            raise key_mismatch(where, what, missing=[f"{prefix}blocks.{i}.*" for i in gaps])
        hidden = shape("blocks.0.mlp.w1.weight", 2)[0]
        rope = state.get(prefix + "rope.freqs_cos")
        if head_width is None and rope is not None:  # (patch tokens, head width)
            dims = tuple(rope.shape) if isinstance(rope, torch.Tensor) else ()
            if len(dims) != 2 or dims[0] != n_pos or not dims[1] or width % dims[1] or dims[1] % 4:
                raise key_mismatch(
                    where, what, wrong_shape=[f"{prefix}rope.freqs_cos {dims or type(rope).__name__}"]
                )
            head_width = int(dims[1])
        if head_width is None:
            head_width = 64
        return cls(width, max(found) + 1, patch, grid * patch, hidden, head_width)


EVA02_B16 = EvaConfig(width=768, layers=12, patch=16, image_size=224, mlp_hidden=int(768 * 2.6667))
EVA02_L14 = EvaConfig(width=1024, layers=24, patch=14, image_size=224, mlp_hidden=int(1024 * 2.6667))


def rope_tables(config: EvaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(tokens, head_width)``: EVA02's 2-D rotary angles per patch,
    the first half of a head rotated by the patch's row, the second by its column, each
    frequency used for an adjacent pair of channels; rows and columns are counted on the
    pre-training grid (``pt_hw_seq_len``) and scaled to this one. Computed in float32 in
    the reference's order, so the tables match its buffers."""
    half = config.head_width // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    grid = config.grid
    t = torch.arange(grid) / grid * config.pt_hw_seq_len
    angles = (t[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)  # (grid, half)
    rows = angles[:, None, :].expand(grid, grid, half)
    cols = angles[None, :, :].expand(grid, grid, half)
    full = torch.cat([rows, cols], dim=-1).reshape(grid * grid, config.head_width)
    return full.cos(), full.sin()


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``(batch, heads, 1 + tokens, dim)`` on the tokens after the
    first (the CLS token keeps its values); channel pairs ``(a, b)`` turn into
    ``(a cos - b sin, b cos + a sin)``."""
    first, rest = t[:, :, :1], t[:, :, 1:]
    pairs = rest.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat((first, rest * cos + turned * sin), dim=2)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` around given tensors (built on the meta device: no random init)."""
    layer = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def _norm(weight: torch.Tensor, bias: torch.Tensor, eps: float) -> nn.LayerNorm:
    norm = nn.LayerNorm(int(weight.shape[0]), eps=eps, device="meta")
    norm.weight = nn.Parameter(weight, requires_grad=False)
    norm.bias = nn.Parameter(bias, requires_grad=False)
    return norm


class EvaBlock(nn.Module):
    """One EVA02 block: pre-norm attention with rotary, sub-LN, SwiGLU with sub-LN."""

    def __init__(
        self,
        norm1: nn.LayerNorm,
        qkv: nn.Linear,
        inner_norm: nn.LayerNorm,
        proj: nn.Linear,
        norm2: nn.LayerNorm,
        w12: nn.Linear,
        ffn_norm: nn.LayerNorm,
        w3: nn.Linear,
    ):
        super().__init__()
        self.norm1, self.qkv, self.inner_norm, self.proj = norm1, qkv, inner_norm, proj
        self.norm2, self.w12, self.ffn_norm, self.w3 = norm2, w12, ffn_norm, w3
        self.kernels: dict[str, Kernel] | None = None  # set by set_matmul (CPU)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is None:
            return plain_linear(x, getattr(self, name))
        return self.kernels[name](x)

    def forward(self, x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        # kernels may answer in bf16: rotary, softmax and norms run in the residual's dtype
        qkv = self.linear("qkv", self.norm1(x)).to(x.dtype)
        q, k, v = qkv.view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, width)
        x = x + self.linear("proj", self.inner_norm(ctx))
        gate, up = self.linear("w12", self.norm2(x)).to(x.dtype).chunk(2, dim=-1)
        return x + self.linear("w3", self.ffn_norm(F.silu(gate) * up))


class EvaVisionTower(nn.Module):
    """EVA02 patch tokens of preprocessed images (see the module docstring)."""

    def __init__(
        self,
        config: EvaConfig,
        patch_embed: nn.Conv2d,
        cls_token: torch.Tensor,
        pos_embed: torch.Tensor,
        blocks: list[EvaBlock],
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.config = config
        self.patch_embed = patch_embed
        self.cls_token = nn.Parameter(cls_token, requires_grad=False)
        self.pos_embed = nn.Parameter(pos_embed, requires_grad=False)
        self.blocks = nn.ModuleList(blocks)
        cos, sin = rope if rope is not None else rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def set_matmul(self, kind: MatmulKind) -> int:
        """Run the blocks' linear layers through ``kind`` kernels; returns how many."""
        for module in self.blocks:
            block = cast(EvaBlock, module)
            block.kernels = {name: make_kernel(getattr(block, name), kind) for name in _LINEARS}
        return len(self.blocks) * len(_LINEARS)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(batch, 1 + tokens, width)``: the last block's output (no final norm), the EVA
        CLS token first, from ``(batch, 3, size, size)`` preprocessed pixels."""
        size = self.config.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ModelFormatError(
                f"the EVA tower takes (n, 3, {size}, {size}) pixels, got {tuple(pixels.shape)}"
            )
        x = self.patch_embed(pixels.to(self.pos_embed.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        heads = self.config.heads
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        for block in self.blocks:
            x = block(x, heads, cos, sin)
        return x

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, torch.Tensor],
        where: Path | str,
        prefix: str = "model_visual.visual.",
        config: EvaConfig | None = None,
    ) -> tuple[EvaVisionTower, set[str]]:
        """The tower from a state dict's tensors under ``prefix`` (shape derived from them
        unless ``config`` is given) and the keys it took or knowingly skips. A missing,
        misshapen or unknown tensor under ``prefix`` is one :class:`ModelFormatError`
        naming ``where`` and the key."""
        cfg = config or EvaConfig.from_state(state, where, prefix)
        what = f"an EVA02 vision tower (width {cfg.width}, {cfg.layers} layers, patch {cfg.patch})"
        used: set[str] = set()

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            key = prefix + name
            t = state.get(key)
            if not isinstance(t, torch.Tensor):
                raise key_mismatch(where, what, missing=[key])
            if tuple(t.shape) != shape:
                raise key_mismatch(
                    where, what, wrong_shape=[f"{key} ({tuple(t.shape)} in the file, {shape} expected)"]
                )
            if not t.is_floating_point():
                raise ModelFormatError(f"{where}: {key} is not floating point ({t.dtype})")
            used.add(key)
            return t.detach().to(torch.float32).contiguous()

        w, h, eps = cfg.width, cfg.mlp_hidden, cfg.eps
        conv = nn.Conv2d(3, w, cfg.patch, stride=cfg.patch, device="meta")
        conv.weight = nn.Parameter(
            get("patch_embed.proj.weight", (w, 3, cfg.patch, cfg.patch)), requires_grad=False
        )
        conv.bias = nn.Parameter(get("patch_embed.proj.bias", (w,)), requires_grad=False)
        blocks = []
        for i in range(cfg.layers):
            p = f"blocks.{i}."
            q_bias, v_bias = get(p + "attn.q_bias", (w,)), get(p + "attn.v_bias", (w,))
            qkv = _linear(
                torch.cat([get(p + f"attn.{n}_proj.weight", (w, w)) for n in "qkv"]),
                torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]),  # no key bias
            )
            w12 = _linear(
                torch.cat([get(p + "mlp.w1.weight", (h, w)), get(p + "mlp.w2.weight", (h, w))]),
                torch.cat([get(p + "mlp.w1.bias", (h,)), get(p + "mlp.w2.bias", (h,))]),
            )

            def norm(name: str, dim: int, p: str = p) -> nn.LayerNorm:
                return _norm(get(p + name + ".weight", (dim,)), get(p + name + ".bias", (dim,)), eps)

            blocks.append(
                EvaBlock(
                    norm("norm1", w),
                    qkv,
                    norm("attn.inner_attn_ln", w),
                    _linear(get(p + "attn.proj.weight", (w, w)), get(p + "attn.proj.bias", (w,))),
                    norm("norm2", w),
                    w12,
                    norm("mlp.ffn_ln", h),
                    _linear(get(p + "mlp.w3.weight", (w, h)), get(p + "mlp.w3.bias", (w,))),
                )
            )
        cls_token = get("cls_token", (1, 1, w))
        pos_embed = get("pos_embed", (1, 1 + cfg.tokens, w))
        rope = _saved_rope(state, where, prefix, cfg, used)
        unknown = [
            k
            for k in state
            if k.startswith(prefix) and k not in used and not k[len(prefix) :].startswith(UNUSED_PARTS)
        ]
        if unknown:
            raise key_mismatch(where, what, unexpected=unknown)
        used |= {k for k in state if k.startswith(prefix)}
        return cls(cfg, conv, cls_token, pos_embed, blocks, rope), used


def _saved_rope(
    state: Mapping[str, torch.Tensor], where: Path | str, prefix: str, cfg: EvaConfig, used: set[str]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rotary tables the checkpoint saved (the reference loads and runs those), checked
    against the ones this config computes (a table of another grid or head width is a
    checkpoint of another shape); ``None`` when it saved none."""
    cos, sin = rope_tables(cfg)
    saved: tuple[torch.Tensor, torch.Tensor] | None = None
    # one module shared by the tower and every block: each copy is saved under its own name
    names = ["rope."] + [f"blocks.{i}.attn.rope." for i in range(cfg.layers)]
    for name in names:
        pair = []
        for part, ours in (("freqs_cos", cos), ("freqs_sin", sin)):
            key = f"{prefix}{name}{part}"
            t = state.get(key)
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(ours.shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise key_mismatch(
                    where,
                    "an EVA02 vision tower",
                    wrong_shape=[f"{key} ({got} in the file, {tuple(ours.shape)} expected)"],
                )
            if float((t.float() - ours).abs().max()) > 1e-4:
                raise ModelFormatError(
                    f"{where}: {key} is not EVA02's rotary table for a {cfg.grid}x{cfg.grid} grid "
                    f"(pre-training grid {cfg.pt_hw_seq_len}, head width {cfg.head_width})"
                )
            used.add(key)
            pair.append(t.detach().float().contiguous())
        if saved is None and len(pair) == 2:
            saved = (pair[0], pair[1])
    return saved
