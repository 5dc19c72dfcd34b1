"""Length-sorted, token-budgeted batch plans, and batches as flat runs of tokens."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, NamedTuple

import numpy as np
import torch

from bgekit.errors import BgekitError
from bgekit.types import TokenSeq

TokenCount = Literal["padded", "real"]


class PaddedView(NamedTuple):
    """A batch as padded ``(n, width)`` tensors: what a transformers forward takes."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """A batch on its device as one flat run of tokens, no padding.

    ``ids`` ``(total,)``: the inputs' token ids back to back; ``type_ids``: their segment
    ids, or ``None``; ``lengths`` ``(n,)``: each input's token count (int64, on the CPU).
    Input ``i`` owns flat rows ``offsets[i]:offsets[i + 1]`` (cu_seqlens), and so do the
    flat per-token outputs ``(total, ...)`` computed from it. :meth:`padded` lays the batch
    out as padded tensors, with ``pad_id`` on ``padding_side``, for forwards that need them
    (transformers models); it is built on first use and kept. ``media``: each input's
    :attr:`~bgekit.types.TokenSeq.media` (``()`` when none has any), for the model's forward.
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    type_ids: torch.Tensor | None = None
    pad_id: int = 0
    padding_side: Literal["right", "left"] = "right"
    media: tuple[object | None, ...] = ()
    _padded: PaddedView | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ids.ndim != 1 or self.lengths.ndim != 1:
            raise BgekitError("a TokenBatch takes flat ids and one length per input")
        if int(self.lengths.sum()) != self.ids.shape[0]:
            raise BgekitError(
                f"lengths add up to {int(self.lengths.sum())} tokens, ids hold {self.ids.shape[0]}"
            )
        if len(self.lengths) and int(self.lengths.min()) < 1:
            raise BgekitError(f"input {int(self.lengths.argmin())} of the batch has no tokens")
        if self.media and len(self.media) != len(self.lengths):
            raise BgekitError(f"{len(self.media)} media entries for a batch of {len(self.lengths)}")

    @classmethod
    def from_seqs(
        cls,
        seqs: Sequence[TokenSeq],
        device: torch.device,
        *,
        pad_id: int = 0,
        padding_side: Literal["right", "left"] = "right",
    ) -> TokenBatch:
        """``seqs`` back to back on ``device`` (segment ids when the first input has them;
        0 for an input without)."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        total = int(lengths.sum())
        ids = np.fromiter(itertools.chain.from_iterable(s.ids for s in seqs), dtype=np.int64, count=total)
        types = None
        if seqs and seqs[0].type_ids is not None:
            parts = (s.type_ids if s.type_ids is not None else (0,) * len(s) for s in seqs)
            types = torch.from_numpy(
                np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=total)
            ).to(device)
        media = tuple(s.media for s in seqs) if any(s.media is not None for s in seqs) else ()
        return cls(
            torch.from_numpy(ids).to(device), torch.from_numpy(lengths), types, pad_id, padding_side, media
        )

    @classmethod
    def from_padded(
        cls,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        padding_side: Literal["right", "left"] = "right",
    ) -> TokenBatch:
        """A batch from padded tensors (each row's mask one run of ones on ``padding_side``),
        which are kept as its :meth:`padded` view: a transformers forward gets them as given."""
        keep = attention_mask.bool()
        batch = cls(
            input_ids[keep],
            keep.sum(dim=1).cpu(),
            None if token_type_ids is None else token_type_ids[keep],
            padding_side=padding_side,
        )
        object.__setattr__(batch, "_padded", PaddedView(input_ids, attention_mask, token_type_ids))
        return batch

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def device(self) -> torch.device:
        return self.ids.device

    @cached_property
    def offsets(self) -> torch.Tensor:
        """``(n + 1,)`` on the CPU: where each input's rows start, then the total."""
        return torch.cat([self.lengths.new_zeros(1), torch.cumsum(self.lengths, 0)])

    @cached_property
    def first(self) -> torch.Tensor:
        """``(n,)`` on the device: each input's first row."""
        return self.offsets[:-1].to(self.device)

    @cached_property
    def last(self) -> torch.Tensor:
        """``(n,)`` on the device: each input's last row."""
        return (self.offsets[1:] - 1).to(self.device)

    @cached_property
    def positions(self) -> torch.Tensor:
        """``(total,)`` on the device: each token's position within its input."""
        starts = torch.repeat_interleave(self.offsets[:-1], self.lengths)
        return (torch.arange(self.ids.shape[0]) - starts).to(self.device)

    @cached_property
    def runs(self) -> list[tuple[int, int, int]]:
        """Runs of consecutive inputs of one length, as (first row, inputs, length): each is
        a ``(inputs, length)`` block of the flat rows. The engine sorts by length, so runs
        are few and long."""
        out: list[tuple[int, int, int]] = []
        offset = 0
        for length in self.lengths.tolist():
            if out and out[-1][2] == length:
                first, count, _ = out[-1]
                out[-1] = (first, count + 1, length)
            else:
                out.append((offset, 1, length))
            offset += length
        return out

    @cached_property
    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, column) of each token in the padded layout, on the device."""
        rows = torch.repeat_interleave(torch.arange(len(self)), self.lengths).to(self.device)
        cols = self.positions
        if self.padding_side == "left":
            shift = int(self.lengths.max()) - self.lengths
            cols = cols + torch.repeat_interleave(shift, self.lengths).to(self.device)
        return rows, cols

    def padded(self) -> PaddedView:
        """The batch as padded tensors (built once)."""
        if self._padded is None:
            n, width = len(self), int(self.lengths.max())
            rows, cols = self._grid
            ids = torch.full((n, width), self.pad_id, dtype=self.ids.dtype, device=self.device)
            ids[rows, cols] = self.ids
            mask = torch.zeros((n, width), dtype=torch.int64, device=self.device)
            mask[rows, cols] = 1
            types = None
            if self.type_ids is not None:
                types = torch.zeros((n, width), dtype=self.type_ids.dtype, device=self.device)
                types[rows, cols] = self.type_ids
            object.__setattr__(self, "_padded", PaddedView(ids, mask, types))
        assert self._padded is not None
        return self._padded

    # the padded view under the names of the padded batch this class used to be
    @property
    def input_ids(self) -> torch.Tensor:
        return self.padded().input_ids

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.padded().attention_mask

    @property
    def token_type_ids(self) -> torch.Tensor | None:
        return self.padded().token_type_ids

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """``(n, width, ...)`` in the padded layout -> the flat ``(total, ...)`` real rows."""
        rows, cols = self._grid
        return padded[rows, cols]

    def pad(self, flat: torch.Tensor, *, drop_first: bool = False) -> torch.Tensor:
        """Flat rows -> ``(n, width, ...)`` in the padded layout, zeros at padding (the
        inverse of :meth:`unpad`). ``drop_first``: ``flat`` holds every position but each
        input's first (``total - n`` rows); the result is ``(n, width - 1, ...)``.
        Differentiable."""
        lengths = self.lengths - 1 if drop_first else self.lengths
        if flat.shape[0] != int(lengths.sum()):
            raise BgekitError(f"{flat.shape[0]} rows do not fit a batch of {int(lengths.sum())} tokens")
        width = int(lengths.max()) if len(self) else 0
        rows = torch.repeat_interleave(torch.arange(len(self)), lengths)
        cols = torch.arange(flat.shape[0]) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths
        )
        if self.padding_side == "left":
            cols = cols + torch.repeat_interleave(width - lengths, lengths)
        out = flat.new_zeros((len(self), width, *flat.shape[1:]))
        return out.index_put((rows.to(flat.device), cols.to(flat.device)), flat)

    def sum_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """``(n, ...)``: each input's rows of ``flat`` added up, in float32 (one reduction
        per run of equal lengths: the same order every time, on every device)."""
        parts = [
            flat[first : first + count * length]
            .view(count, length, *flat.shape[1:])
            .sum(1, dtype=torch.float32)
            for first, count, length in self.runs
        ]
        return torch.cat(parts)


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    max_batch_tokens: int,
    max_batch_size: int,
    *,
    count: TokenCount = "padded",
) -> list[np.ndarray]:
    """Group input positions into batches, longest first.

    Inputs are sorted by length (descending, stable), and each batch holds as many inputs
    as fit ``max_batch_tokens``, at most ``max_batch_size`` and at least one. ``count``
    says what the budget counts: ``"padded"``, batch size times the longest length (what
    a forward on padded tensors computes on); ``"real"``, the sum of the lengths (what a
    packed forward computes on).

    >>> [b.tolist() for b in plan_batches([3, 9, 4, 9, 1], max_batch_tokens=18, max_batch_size=8)]
    [[1, 3], [2, 0, 4]]
    >>> [b.tolist() for b in plan_batches([3, 9, 4, 9, 1], 13, 8, count="real")]
    [[1], [3, 2], [0, 4]]
    >>> [b.tolist() for b in plan_batches([5, 5, 5], max_batch_tokens=100, max_batch_size=2)]
    [[0, 1], [2]]
    """
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be at least 1")
    if count not in ("padded", "real"):
        raise ValueError(f"count must be 'padded' or 'real', got {count!r}")
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    sorted_lens = np.maximum(lens[order], 1)
    ends = np.cumsum(sorted_lens)  # real tokens up to and including each sorted input
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        if count == "real":
            before = int(ends[start - 1]) if start else 0
            fit = int(np.searchsorted(ends, before + max_batch_tokens, side="right")) - start
        else:
            fit = max_batch_tokens // int(sorted_lens[start])
        size = max(1, min(max_batch_size, fit, n - start))
        batches.append(order[start : start + size])
        start += size
    return batches


def pad_batch(
    seqs: Sequence[TokenSeq],
    pad_id: int,
    device: torch.device,
    padding_side: Literal["right", "left"] = "right",
) -> TokenBatch:
    """``seqs`` as a batch on ``device`` whose padded view pads with ``pad_id`` on
    ``padding_side`` (kept for callers of the padded batch; see :meth:`TokenBatch.from_seqs`)."""
    return TokenBatch.from_seqs(seqs, device, pad_id=pad_id, padding_side=padding_side)
