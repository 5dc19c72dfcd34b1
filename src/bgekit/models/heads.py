"""The encoder forward with BGE's output heads: pooling (dense), sparse and multi-vector (SPEC §2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine import TokenBatch
from bgekit.errors import ModelFormatError
from bgekit.models.loading import safe_torch_load
from bgekit.models.long_input import mcls_positions
from bgekit.models.settings import POOLINGS
from bgekit.scoring.sparse import max_per_token
from bgekit.types import EmbeddingRow, OutputKind, SparseVec


def load_linear(path: Path, hidden_size: int) -> nn.Linear:
    """A Linear layer from a state-dict file, read with ``weights_only=True`` (no pickled code);
    anything but a ``weight`` of ``(n, hidden_size)`` and an optional ``bias`` of ``(n,)`` is
    an error naming the file."""
    state = safe_torch_load(path)
    what = f"{path} is not a Linear({hidden_size}, n) state dict"
    if not isinstance(state, dict):
        raise ModelFormatError(f"{what} (it holds a {type(state).__name__})")
    weight = state.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != hidden_size:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise ModelFormatError(f"{what} (weight shape {shape})")
    extra = sorted(str(k) for k in state if k not in ("weight", "bias"))
    if extra:
        raise ModelFormatError(f"{what}: unexpected keys {extra[:3]}")
    bias = state.get("bias")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ModelFormatError(f"{what}: bias shape {got} does not match weight shape {tuple(weight.shape)}")
    if not weight.is_floating_point() or (bias is not None and not bias.is_floating_point()):
        raise ModelFormatError(f"{what}: its tensors are not floating point")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.load_state_dict(state)
    return layer


def pool(hidden: torch.Tensor, batch: TokenBatch, pooling: str) -> torch.Tensor:
    """One vector per input from flat hidden states ``(total, dim)``: its first token, the
    mean of its tokens, or its last token."""
    if pooling == "cls":
        return hidden[batch.first]
    if pooling == "mean":
        counts = batch.lengths.to(device=hidden.device, dtype=torch.float32)
        return (batch.sum_rows(hidden) / counts[:, None]).to(hidden.dtype)
    if pooling == "last_token":
        return hidden[batch.last]
    raise ModelFormatError(f"unknown pooling {pooling!r}; bgekit supports {', '.join(POOLINGS)}")


def sparse_rows(
    weights: np.ndarray, ids: np.ndarray, lengths: np.ndarray, special_ids: frozenset[int]
) -> list[SparseVec]:
    """Per input of a flat batch (``weights`` and token ``ids``: one per token, inputs back
    to back, ``lengths`` tokens each): token id -> its largest weight, specials and zero
    weights dropped (:func:`~bgekit.scoring.sparse.max_per_token`)."""
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return max_per_token(rows, ids, weights, len(lengths), drop_ids=special_ids)


class EncoderWithHeads(nn.Module):
    """An encoder backbone (see :mod:`bgekit.models.backbones`) plus the optional BGE-M3
    heads: what inference runs and what training trains (same modules, same functions).
    Hidden states are flat rows ``(total tokens, dim)`` (see :class:`~bgekit.engine.TokenBatch`)."""

    def __init__(self, backbone: nn.Module, colbert: nn.Linear | None, sparse: nn.Linear | None):
        super().__init__()
        self.backbone = backbone
        self.colbert_linear = colbert
        self.sparse_linear = sparse

    @property
    def packed(self) -> bool:
        """Whether the backbone computes on real tokens only (the engine's budget follows)."""
        return bool(getattr(self.backbone, "packed", False))

    @property
    def pooled(self) -> bool:
        """Whether the backbone returns one vector per input (CLIP-style towers with their
        own projections) instead of per-token hidden states."""
        return bool(getattr(self.backbone, "pooled", False))

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        return self.backbone(batch)

    def dense(self, hidden: torch.Tensor, batch: TokenBatch, pooling: str, normalize: bool) -> torch.Tensor:
        """One vector per input: pooled, L2-normalised when ``normalize``."""
        vec = pool(hidden, batch, pooling)
        return F.normalize(vec, dim=-1) if normalize else vec

    def sparse_weights(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(total,)``: relu(linear(h)) per token (specials still in)."""
        assert self.sparse_linear is not None
        return torch.relu(self.sparse_linear(hidden)).squeeze(-1)

    def multivectors(self, hidden: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """``(total - inputs, dim)``: linear(h) of every position but each input's first,
        inputs back to back, each vector L2-normalised."""
        assert self.colbert_linear is not None
        return F.normalize(self.colbert_linear(hidden[batch.positions > 0]), dim=-1)

    def token_vectors(self, hidden: torch.Tensor) -> torch.Tensor:
        """linear(h) of every position, L2-normalised (the multi-vector head on all tokens)."""
        assert self.colbert_linear is not None
        return F.normalize(self.colbert_linear(hidden), dim=-1)


@dataclass(frozen=True)
class TokenOutputs:
    """One input's per-token outputs, padding removed, special tokens included: last hidden
    states ``(n, hidden)``, sparse weights ``(n,)`` and multi-vectors ``(n, dim)`` (every
    position, the first too), float32; ``None``: not asked for."""

    hidden: np.ndarray
    sparse: np.ndarray | None = None
    multivector: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.hidden.shape[0])


class TokenRunner:
    """Runs one replica and returns each input's :class:`TokenOutputs` (no pooling)."""

    def __init__(self, model: EncoderWithHeads, device: torch.device, outputs: Sequence[OutputKind] = ()):
        self.model = model
        self._device = device
        self.outputs = frozenset(outputs)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def packed(self) -> bool:
        return self.model.packed

    def __call__(self, batch: TokenBatch) -> list[TokenOutputs]:
        model = self.model
        if model.pooled:
            raise ModelFormatError("this model gives one vector per input; it has no per-token states")
        hidden = model.hidden(batch)
        lengths = batch.lengths.tolist()
        n = len(lengths)

        def rows(t: torch.Tensor) -> list[np.ndarray]:  # one copy to the CPU, then per input
            return [part.numpy() for part in torch.split(t.float().cpu(), lengths)]

        sparse: list[np.ndarray | None] = [None] * n
        multi: list[np.ndarray | None] = [None] * n
        if "sparse" in self.outputs:
            sparse = list(rows(model.sparse_weights(hidden)))
        if "multivector" in self.outputs:
            multi = list(rows(model.token_vectors(hidden)))
        return [TokenOutputs(h, s, m) for h, s, m in zip(rows(hidden), sparse, multi, strict=True)]


class EmbedRunner:
    """Runs one replica and turns hidden states into :class:`EmbeddingRow` values."""

    def __init__(
        self,
        model: EncoderWithHeads,
        device: torch.device,
        *,
        pooling: str,
        normalize: bool,
        outputs: Sequence[OutputKind],
        special_ids: frozenset[int],
        mcls: tuple[int, int] | None = None,
    ):
        self.model = model
        self._device = device
        self.pooling = pooling
        self.normalize = normalize
        self.outputs = frozenset(outputs)
        self.special_ids = special_ids
        # (stride, trailing special tokens): inputs laid out with a CLS token every stride
        # tokens (bgekit.models.long_input.mcls_ids); dense is the mean of those CLS states
        self.mcls = mcls

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def packed(self) -> bool:
        return self.model.packed

    def __call__(self, batch: TokenBatch) -> list[EmbeddingRow]:
        model = self.model
        hidden = model.hidden(batch)
        n = len(batch)
        lengths = batch.lengths.numpy()
        starts = batch.offsets[:-1].tolist()
        dense: list[np.ndarray | None] = [None] * n
        sparse: list[SparseVec | None] = [None] * n
        multi: list[np.ndarray | None] = [None] * n
        cls_at = [mcls_positions(int(m), *self.mcls) for m in lengths] if self.mcls else None
        if "dense" in self.outputs:
            # a new tensor (gathered rows); a pooled backbone already gives one row per input
            vec = hidden.clone() if model.pooled else pool(hidden, batch, self.pooling)
            for i, at in enumerate(cls_at or ()):
                if len(at) > 1:  # one CLS: the usual first-token vector, bit for bit
                    vec[i] = hidden[torch.from_numpy(at + starts[i]).to(hidden.device)].mean(dim=0)
            vec = F.normalize(vec, dim=-1) if self.normalize else vec
            dense = list(vec.float().cpu().numpy())
        if "sparse" in self.outputs:  # inserted CLS tokens are special: dropped like the first
            weights = model.sparse_weights(hidden).float().cpu().numpy()
            sparse = list(sparse_rows(weights, batch.ids.cpu().numpy(), lengths, self.special_ids))
        if "multivector" in self.outputs:
            vecs = model.multivectors(hidden, batch).float().cpu().numpy()
            # Positions after the first (CLS), up to and including the end token.
            rows = np.split(vecs, np.cumsum(lengths - 1)[:-1])
            for i, at in enumerate(cls_at or ()):
                if len(at) > 1:  # without the inserted CLS tokens (row r is position r + 1)
                    rows[i] = np.delete(rows[i], at[1:] - 1, axis=0)
            multi = list(rows)
        return [EmbeddingRow(d, s, m) for d, s, m in zip(dense, sparse, multi, strict=True)]
