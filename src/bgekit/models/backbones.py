"""Model forwards behind one small interface: a :class:`~bgekit.engine.TokenBatch` in, the
last hidden states out as flat rows ``(total tokens, dim)`` (no padding).

Two implementations:

- :class:`TransformersBackbone` calls the transformers model as it is (any architecture) on
  the batch's padded view and keeps the real tokens' rows of its output.
- :class:`PackedEncoder` runs BERT / XLM-RoBERTa encoders on the flat tokens as the engine
  hands them over, so no layer computes on padding (``packed = True``: the engine budgets
  real tokens); attention runs per run of equal-length inputs with no mask (the engine
  sorts by length, so runs are long); the query, key and value projections are one fused
  matrix product. Same maths as the transformers forward.

Both implement :class:`~bgekit.models.kernels.FastPath`: on CPUs the linear layers run
through :mod:`bgekit.models.kernels` (oneDNN fp32, which runs about twice as fast as the
default BLAS on the AMD EPYC machines measured here; bf16 matrix products with fp32
everywhere else; or int8), chosen when the model is placed (see ``runtime``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine import TokenBatch
from bgekit.engine.cpu import cpu_features
from bgekit.engine.device import MatmulKind
from bgekit.models.kernels import Kernel, RangeRecorder, make_kernel, patch_linears, plain_linear, smoothing

_PACKED_TYPES = {"bert": 0, "xlm-roberta": 1, "roberta": 1}  # value: positions offset by pad id


class TransformersBackbone(nn.Module):
    """The transformers model's own forward; on CPUs its linear layers can run through
    bgekit's kernels (the pooler, part of a cross-encoder's head, stays fp32)."""

    packed = False  # computes on the padded view

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        view = batch.padded()
        kwargs = {"input_ids": view.input_ids, "attention_mask": view.attention_mask}
        if view.token_type_ids is not None:
            kwargs["token_type_ids"] = view.token_type_ids
        return batch.unpad(self.model(**kwargs).last_hidden_state)

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        return self.forward(batch)

    def set_matmul(self, kind: MatmulKind) -> int:
        return patch_linears(self.model, kind, skip=("pooler",))

    # -- training (the transformers model can be trained and saved as it is) ---------------

    def enable_gradient_checkpointing(self) -> None:
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]

    def save_pretrained(self, folder: str) -> None:
        """The weights as a Hugging Face folder (what ``from_pretrained`` loads)."""
        state = {k: v.detach().cpu().clone().contiguous() for k, v in self.model.state_dict().items()}
        self.model.save_pretrained(folder, state_dict=state)  # type: ignore[operator]


def config_unsupported(config: Mapping[str, Any]) -> str | None:
    """Why :class:`PackedEncoder` cannot run a model with this ``config.json``, or ``None``."""
    model_type = config.get("model_type")
    if model_type not in _PACKED_TYPES:
        return f"model type {model_type}"
    position = config.get("position_embedding_type") or "absolute"
    if position != "absolute":
        return f"position embeddings {position}"
    if config.get("hidden_act") != "gelu":
        return f"activation {config.get('hidden_act')}"
    if config.get("is_decoder"):
        return "decoder"
    return None


def packed_unsupported(model: nn.Module) -> str | None:
    """Why :class:`PackedEncoder` cannot run ``model``, or ``None`` when it can."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "no config"
    return config_unsupported(cfg.to_dict())


def position_offset(model_type: str, pad_id: int) -> int:
    """Where position ids start: RoBERTa-style models count from the padding id + 1."""
    return pad_id + 1 if _PACKED_TYPES[model_type] else 0


_LINEARS = ("qkv", "attn_out", "ffn_in", "ffn_out")
# int8 everywhere but the FFN output: its input (after GELU) has the widest outlier
# channels. all-MiniLM-L6-v2, smoothed, one linear at a time in int8: layer 0's FFN output
# alone took the lowest cosine to fp32 to 0.9955; every other linear cost under 2e-4.
_INT8_LINEARS = ("qkv", "attn_out", "ffn_in")


def _float_kind() -> MatmulKind:
    """The fastest float kernels on this CPU: bf16 where it has bf16 instructions."""
    return "bfloat16" if cpu_features().bf16 else "float32"


class PackedLayer(nn.Module):
    """One BERT layer's weights, the query, key and value projections fused into ``qkv``."""

    def __init__(
        self,
        qkv: nn.Linear,
        attn_out: nn.Linear,
        attn_norm: nn.LayerNorm,
        ffn_in: nn.Linear,
        ffn_out: nn.Linear,
        ffn_norm: nn.LayerNorm,
    ):
        super().__init__()
        self.qkv, self.attn_out, self.attn_norm = qkv, attn_out, attn_norm
        self.ffn_in, self.ffn_out, self.ffn_norm = ffn_in, ffn_out, ffn_norm
        self.kernels: dict[str, Kernel] | None = None  # set by set_matmul (CPU)

    @classmethod
    def from_transformers(cls, hf_layer: Any) -> PackedLayer:
        """Taken from a transformers layer (``Any``: its own class)."""
        att = hf_layer.attention.self
        qkv = nn.Linear(att.query.in_features, 3 * att.query.out_features)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([att.query.weight, att.key.weight, att.value.weight]))
            qkv.bias.copy_(torch.cat([att.query.bias, att.key.bias, att.value.bias]))
        out = hf_layer.output
        return cls(
            qkv,
            hf_layer.attention.output.dense,
            hf_layer.attention.output.LayerNorm,
            hf_layer.intermediate.dense,
            out.dense,
            out.LayerNorm,
        )

    def linear(self, name: str, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if self.kernels is None:
            return plain_linear(x, getattr(self, name), gelu)
        return self.kernels[name](x, gelu)


class PackedEncoder(nn.Module):
    """BERT-style encoder forward on flat tokens (see the module docstring)."""

    packed = True

    def __init__(
        self,
        *,
        word: nn.Embedding,
        position: nn.Embedding,
        token_type: nn.Embedding,
        emb_norm: nn.LayerNorm,
        layers: list[PackedLayer],
        heads: int,
        position_offset: int,
    ):
        super().__init__()
        self.word, self.position, self.token_type, self.emb_norm = word, position, token_type, emb_norm
        self.layers = nn.ModuleList(layers)
        self.heads = heads
        self.dim = int(word.embedding_dim)
        self.position_offset = position_offset
        # largest input per channel of each (layer, linear), recorded by calibrate()
        self.input_max: dict[tuple[int, str], torch.Tensor] = {}

    @classmethod
    def from_transformers(cls, model: Any) -> PackedEncoder:
        """The encoder of a loaded transformers BERT / XLM-RoBERTa model."""
        reason = packed_unsupported(model)
        if reason is not None:
            raise ValueError(f"packed forward does not support this model: {reason}")
        cfg = model.config
        emb = model.embeddings
        return cls(
            word=emb.word_embeddings,
            position=emb.position_embeddings,
            token_type=emb.token_type_embeddings,
            emb_norm=emb.LayerNorm,
            layers=[PackedLayer.from_transformers(layer) for layer in model.encoder.layer],
            heads=int(cfg.num_attention_heads),
            position_offset=position_offset(cfg.model_type, int(cfg.pad_token_id or 0)),
        )

    def set_matmul(self, kind: MatmulKind) -> int:
        """Every layer's linears in ``kind``; for ``"int8"`` the FFN output stays in bf16
        (fp32 on CPUs without bf16) and the others are smoothed when :meth:`calibrate` ran."""
        count = 0
        for i, module in enumerate(self.layers):
            layer = cast(PackedLayer, module)
            if kind != "int8":
                layer.kernels = {name: make_kernel(getattr(layer, name), kind) for name in _LINEARS}
                count += len(_LINEARS)
                continue
            kernels = {}
            for name in _INT8_LINEARS:
                linear = getattr(layer, name)
                seen = self.input_max.get((i, name))
                kernels[name] = make_kernel(
                    linear, "int8", None if seen is None else smoothing(seen, linear.weight)
                )
            kernels["ffn_out"] = make_kernel(layer.ffn_out, _float_kind())
            layer.kernels = kernels
            count += len(_INT8_LINEARS)
        return count

    def calibrate(self, batch: TokenBatch) -> None:
        """Record the largest input per channel of every linear layer over a forward of
        ``batch`` (bf16 products where the CPU has them: ranges need no more); int8 kernels
        built afterwards are smoothed with them (SmoothQuant)."""
        fast = _float_kind()
        layers = [cast(PackedLayer, m) for m in self.layers]
        before = [layer.kernels for layer in layers]
        recorders = {}
        for i, layer in enumerate(layers):
            for name in _LINEARS:
                recorders[i, name] = RangeRecorder(make_kernel(getattr(layer, name), fast))
            layer.kernels = {name: recorders[i, name] for name in _LINEARS}
        try:
            with torch.inference_mode():
                self.forward(batch)
        finally:
            for layer, kernels in zip(layers, before, strict=True):
                layer.kernels = kernels
        self.input_max = {key: r.input_max for key, r in recorders.items() if r.input_max is not None}

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        return self.forward(batch)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.encode(self.embed(batch), batch)

    def embed(self, batch: TokenBatch, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding layer's flat output; ``positions``: rows of the position table to
        use (default: each token's position plus the model's offset). A model that computes
        some token slots itself (BGE-Visualized's image tokens) replaces those rows."""
        if positions is None:
            positions = batch.positions + self.position_offset
        x = self.word(batch.ids) + self.position(positions)
        if batch.type_ids is not None:
            x = x + self.token_type(batch.type_ids)
        else:
            x = x + self.token_type.weight[0]
        return self.emb_norm(x)

    def encode(self, x: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """The encoder layers over flat embeddings ``x`` laid out as ``batch``."""
        runs = batch.runs  # (first token, inputs, length) blocks of equal-length inputs
        d, h = self.dim, self.heads
        for module in self.layers:
            layer = cast(PackedLayer, module)
            qkv = layer.linear("qkv", x)
            ctx = torch.empty_like(qkv[:, :d])
            for first, count, length in runs:
                span = slice(first, first + count * length)
                q, k, v = qkv[span].view(count, length, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
                ctx[span] = _attention(q, k, v, x.dtype).transpose(1, 2).reshape(count * length, d)
            # a bf16 kernel's output is promoted by the fp32 residual add
            x = layer.attn_norm(x + layer.linear("attn_out", ctx))
            x = layer.ffn_norm(x + layer.linear("ffn_out", layer.linear("ffn_in", x, gelu=True)))
        return x


# Below these lengths two batched matrix products beat the fused (flash) kernel on CPUs
# (12 heads x 32 dims, 4,096 tokens, 2 threads). fp32 inputs: 2.9x at 20 tokens, 1.7x at 50,
# even at 128, 0.3x at 256. bf16 inputs (from bf16 kernels): on AVX512-BF16 (AMD Zen 4) the
# products in bf16 take 3.6 / 5.7 / 11.0 ms at 64 / 128 / 256 tokens against the fused
# kernel's 7.0 / 10.0 / 14.9; with AMX tiles (Intel Xeon) the fused kernel wins from 32
# tokens on (a whole encode 1.1x faster than with products below 128).
_SHORT = 128
_SHORT_BF16 = {"amx": 32, "avx512": 256}


@functools.cache
def _short_bf16() -> int:
    bf16 = cpu_features().bf16
    return _SHORT_BF16["amx" if bf16 is not None and bf16.startswith("AMX") else "avx512"]


def attention_kernels(dtype: torch.dtype) -> str:
    """Which attention kernel runs for packed inputs whose projections come out in ``dtype``."""
    if dtype == torch.bfloat16:
        return f"bf16 batched products under {_short_bf16()} tokens, torch's fused (flash) kernel from there"
    return f"fp32 batched products under {_SHORT} tokens, torch's fused (flash) kernel from there"


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unmasked softmax attention over ``(inputs, heads, length, head_dim)``.

    The fused kernel keeps scores and softmax in fp32 whatever its inputs. The short path
    computes in the inputs' dtype when they are bf16 (bf16 kernels made them: products
    accumulate in fp32, scores and probabilities are rounded to bf16), else in ``dtype``,
    the residual stream's.
    """
    count, heads, length, dim = q.shape
    bf16 = q.dtype == torch.bfloat16
    if q.device.type != "cpu" or length >= (_short_bf16() if bf16 else _SHORT):
        return F.scaled_dot_product_attention(q, k, v)
    if not bf16:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    rows = count * heads
    keys = k.reshape(rows, length, dim).transpose(1, 2)
    # the 1/sqrt(dim) scale applied by the product itself (no rounded copy of q)
    scores = torch.baddbmm(
        q.new_empty(()).expand(rows, length, length),
        q.reshape(rows, length, dim),
        keys,
        beta=0,
        alpha=dim**-0.5,
    )
    out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(rows, length, dim))
    return out.view(count, heads, length, dim)


def make_backbone(model: nn.Module, backend: Literal["auto", "transformers"]) -> nn.Module:
    """The fastest forward that runs ``model`` exactly, unless ``backend`` says otherwise."""
    if backend == "auto" and packed_unsupported(model) is None:
        return PackedEncoder.from_transformers(model)
    return TransformersBackbone(model)


class CrossEncoderForward(nn.Module):
    """A sequence-classification model as backbone + its own head: one logit per row.

    BERT-style models pool (dense + tanh on the first token) before a linear classifier;
    RoBERTa-style heads take the sequence output themselves. Both heads are the
    checkpoint's own modules, so only the encoder forward changes.
    """

    def __init__(self, model: Any, backend: Literal["auto", "transformers"]):
        super().__init__()
        # the whole transformers model, for saving (not a submodule: its parameters are ours)
        object.__setattr__(self, "_hf_model", model)
        base = getattr(model, model.base_model_prefix)
        self.backbone = make_backbone(base, backend)
        self.classifier: nn.Module = model.classifier
        self.pooler: nn.Module | None = getattr(base, "pooler", None)
        if isinstance(self.classifier, nn.Linear) and self.pooler is None:
            raise ValueError("a linear classifier needs the model's pooler")

    @property
    def packed(self) -> bool:
        """Whether the backbone computes on real tokens only."""
        return bool(getattr(self.backbone, "packed", False))

    def save_pretrained(self, folder: str) -> None:
        """The sequence-classification model as a Hugging Face folder (trained with the
        transformers backbone, whose parameters are the model's own)."""
        if not isinstance(self.backbone, TransformersBackbone):
            raise ValueError("only a cross-encoder on the transformers backbone saves its weights")
        model = self.__dict__["_hf_model"]
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        model.save_pretrained(folder, state_dict=state)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        # both heads read position 0 of a (rows, positions, dim) input: each input's first token
        first = self.backbone(batch)[batch.first].unsqueeze(1)
        if isinstance(self.classifier, nn.Linear):
            assert self.pooler is not None
            return self.classifier(self.pooler(first))[:, 0]
        return self.classifier(first)[:, 0]
