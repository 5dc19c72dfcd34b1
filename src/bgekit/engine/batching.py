"""Length-sorted, token-budgeted batch plans and padding into tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bgekit.types import TokenSeq


@dataclass(frozen=True)
class TokenBatch:
    """A padded batch on its device; ``lengths`` are the real (unpadded) lengths."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    lengths: torch.Tensor
    padding_side: Literal["right", "left"] = "right"

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def plan_batches(
    lengths: Sequence[int] | np.ndarray, max_batch_tokens: int, max_batch_size: int
) -> list[np.ndarray]:
    """Group input positions into batches, longest first.

    Inputs are sorted by length (descending, stable), and each batch holds as many
    inputs as fit ``batch_size * longest_length <= max_batch_tokens`` (padded tokens),
    at most ``max_batch_size`` and at least one.

    >>> [b.tolist() for b in plan_batches([3, 9, 4, 9, 1], max_batch_tokens=18, max_batch_size=8)]
    [[1, 3], [2, 0, 4]]
    >>> [b.tolist() for b in plan_batches([5, 5, 5], max_batch_tokens=100, max_batch_size=2)]
    [[0, 1], [2]]
    """
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be at least 1")
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lens[order[start]]), 1)
        size = max(1, min(max_batch_size, max_batch_tokens // longest, n - start))
        batches.append(order[start : start + size])
        start += size
    return batches


def pad_batch(
    seqs: Sequence[TokenSeq],
    pad_id: int,
    device: torch.device,
    padding_side: Literal["right", "left"] = "right",
) -> TokenBatch:
    """Pad token sequences into tensors on ``device``."""
    lengths = [len(s) for s in seqs]
    width = max(lengths)
    n = len(seqs)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    with_types = seqs[0].type_ids is not None
    types = np.zeros((n, width), dtype=np.int64) if with_types else None
    for i, s in enumerate(seqs):
        length = lengths[i]
        sl = slice(0, length) if padding_side == "right" else slice(width - length, width)
        ids[i, sl] = s.ids
        mask[i, sl] = 1
        if types is not None and s.type_ids is not None:
            types[i, sl] = s.type_ids
    return TokenBatch(
        input_ids=torch.from_numpy(ids).to(device),
        attention_mask=torch.from_numpy(mask).to(device),
        token_type_ids=None if types is None else torch.from_numpy(types).to(device),
        lengths=torch.tensor(lengths, dtype=torch.int64),
        padding_side=padding_side,
    )
