"""Inputs longer than a model's window, as pure functions on token positions and outputs.

Three policies (``LONG_INPUTS``):

- ``"truncate"``: cut at the end (the reference behaviour).
- ``"chunk"``: split the text's tokens into windows of the model's length, consecutive
  windows sharing ``overlap`` tokens (:func:`window_bounds`); each window gets the special
  tokens a text gets, all windows run as ordinary inputs, then the window outputs combine:
  dense by a token-count-weighted mean (:func:`combine_dense`), sparse by the largest weight
  per token (:func:`combine_sparse`), token rows (multi-vectors, hidden states) stitched with
  each overlapping token taken once (:func:`stitch_rows`).
- ``"mcls"`` (BGE-M3 paper, "multiple CLS"): a CLS token before every ``stride`` text tokens
  (:func:`mcls_ids`); the dense vector is the mean of the CLS tokens' last hidden states, the
  other outputs skip the inserted CLS positions (:func:`mcls_positions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from bgekit.errors import InputError
from bgekit.scoring.sparse import max_per_token
from bgekit.types import EmbeddingRow, SparseVec, TokenSeq

T = TypeVar("T")
LongInput = Literal["truncate", "chunk", "mcls"]
LONG_INPUTS: tuple[LongInput, ...] = ("truncate", "chunk", "mcls")
DEFAULT_OVERLAP = 64
DEFAULT_MCLS_STRIDE = 256


@dataclass(frozen=True)
class LongInputPolicy:
    """How an embedder treats an input longer than its window (resolved at load).

    ``window``: tokens of one model input, special tokens included (the passage max length);
    ``overlap``: text tokens consecutive windows share (chunk); ``stride``: text tokens per
    CLS token (mcls); ``max_tokens``: the longest document accepted before it is cut at the
    end, special (and inserted CLS) tokens included (``None``: no limit).
    """

    policy: LongInput
    window: int
    overlap: int
    stride: int
    max_tokens: int | None


def _one_of(value: object, choices: Sequence[T], name: str) -> T:
    """``value`` when it is one of ``choices``, else an error naming them."""
    for c in choices:
        if value == c:
            return c
    raise InputError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_policy(policy: object) -> LongInput:
    """``policy`` when it is one of :data:`LONG_INPUTS`, else an error naming the choices."""
    return _one_of(policy, LONG_INPUTS, "long_input")


def window_bounds(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of windows of at most ``size`` over ``n`` tokens, each starting
    ``size - overlap`` after the previous one, the last ending at ``n``; ``n <= size`` is one
    window.

    >>> window_bounds(10, 4, 1)
    [(0, 4), (3, 7), (6, 10)]
    >>> window_bounds(3, 4, 1)
    [(0, 3)]
    """
    if size < 1 or not 0 <= overlap < size:
        raise InputError(f"a window of {size} tokens needs an overlap in 0..{size - 1}, got {overlap}")
    if n <= size:
        return [(0, n)]
    step = size - overlap
    out = []
    start = 0
    while True:
        out.append((start, min(start + size, n)))
        if start + size >= n:
            return out
        start += step


def owned_ranges(bounds: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The tokens each window contributes when windows are stitched: every token once, an
    overlap split in its middle (the first half from the earlier window, which saw more of
    its left context; the rest from the later one).

    >>> owned_ranges([(0, 4), (3, 7), (6, 10)])
    [(0, 3), (3, 6), (6, 10)]
    """
    out = []
    for j, (a, b) in enumerate(bounds):
        lo = a if j == 0 else (a + bounds[j - 1][1]) // 2
        hi = b if j == len(bounds) - 1 else (bounds[j + 1][0] + b) // 2
        out.append((lo, hi))
    return out


def stitch_rows(
    rows: Sequence[np.ndarray], bounds: Sequence[tuple[int, int]], before: int, after: int
) -> np.ndarray:
    """One row per token of the whole input from per-window rows.

    Window ``j``'s rows are ``before`` rows of leading special tokens, one row per text token
    of ``bounds[j]``, then ``after`` rows of trailing special tokens. The result: the first
    window's leading rows, each text token's row from the window that owns it
    (:func:`owned_ranges`), the last window's trailing rows.
    """
    parts = [rows[0][:before]]
    for (a, _), (lo, hi), r in zip(bounds, owned_ranges(bounds), rows, strict=True):
        parts.append(r[before + lo - a : before + hi - a])
    last = rows[-1]
    parts.append(last[last.shape[0] - after :] if after else last[:0])
    return np.concatenate(parts, axis=0)


def combine_dense(vectors: np.ndarray, weights: Sequence[int], normalize: bool) -> np.ndarray:
    """The weighted mean of window vectors (weights: each window's text tokens),
    L2-normalised again when the model normalises."""
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    mean = (vectors.astype(np.float64) * w[:, None]).sum(axis=0) / w.sum()
    if normalize:
        norm = np.linalg.norm(mean)
        mean = mean / norm if norm > 0 else mean
    return mean.astype(np.float32)


def combine_sparse(vectors: Sequence[SparseVec]) -> SparseVec:
    """Per token id, the largest weight any window gave it (:func:`max_per_token`)."""
    ids = np.concatenate([v.indices for v in vectors]) if vectors else np.zeros(0, np.int64)
    vals = np.concatenate([v.values for v in vectors]) if vectors else np.zeros(0, np.float32)
    return max_per_token(np.zeros(len(ids), dtype=np.int64), ids, vals, 1)[0]


# -- MCLS -------------------------------------------------------------------------------------


def mcls_count(n_text: int, stride: int) -> int:
    """CLS tokens an input of ``n_text`` text tokens gets: one per ``stride`` started, at least one."""
    return max(1, math.ceil(n_text / stride))


def mcls_ids(text: Sequence[int], cls_id: int, stride: int, suffix: Sequence[int]) -> list[int]:
    """``[CLS] t_1 .. t_stride [CLS] t_stride+1 .. [CLS] .. t_n`` followed by ``suffix``.

    >>> mcls_ids([5, 6, 7, 8, 9], 0, 2, [2])
    [0, 5, 6, 0, 7, 8, 0, 9, 2]
    """
    out: list[int] = []
    for g in range(mcls_count(len(text), stride)):
        out.append(cls_id)
        out.extend(text[g * stride : (g + 1) * stride])
    out.extend(suffix)
    return out


def mcls_positions(length: int, stride: int, n_suffix: int) -> np.ndarray:
    """Positions of the CLS tokens in an :func:`mcls_ids` sequence of ``length`` tokens
    (the count follows from the length: ``n + ceil(n / stride)`` tokens before the suffix)."""
    k = max(1, math.ceil((length - n_suffix) / (stride + 1)))
    return np.arange(k, dtype=np.int64) * (stride + 1)


def mcls_capacity(limit: int, stride: int, n_suffix: int) -> int:
    """The most text tokens whose :func:`mcls_ids` sequence fits ``limit`` tokens."""
    room = limit - n_suffix
    if room < 1:
        return 0
    n = room * stride // (stride + 1)
    while n + 1 + mcls_count(n + 1, stride) <= room:
        n += 1
    while n > 0 and n + mcls_count(n, stride) > room:
        n -= 1
    return n


# -- windows of tokenised inputs ---------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Tokenised inputs as model-sized pieces: ``pieces`` to run; per input, the position of
    its first piece and the text-token bounds of its windows (one window: the input itself)."""

    pieces: list[TokenSeq]
    first: list[int]
    bounds: list[list[tuple[int, int]]]

    def windows_of(self, i: int) -> slice:
        return slice(self.first[i], self.first[i] + len(self.bounds[i]))

    @property
    def chunked(self) -> int:
        """Inputs split into more than one window."""
        return sum(len(b) > 1 for b in self.bounds)


def split_windows(
    seqs: Sequence[TokenSeq], window: int, overlap: int, frame: tuple[Sequence[int], Sequence[int]]
) -> Split:
    """Each input longer than ``window`` tokens as windows of its text tokens (``frame``: the
    special tokens before and after a text), each window framed the same way; shorter inputs
    pass through unchanged."""
    prefix, suffix = list(frame[0]), list(frame[1])
    room = window - len(prefix) - len(suffix)
    pieces: list[TokenSeq] = []
    first: list[int] = []
    bounds: list[list[tuple[int, int]]] = []
    for s in seqs:
        first.append(len(pieces))
        n = len(s) - len(prefix) - len(suffix)
        if len(s) <= window:
            pieces.append(s)
            bounds.append([(0, n)])
            continue
        text = list(s.ids[len(prefix) : len(s) - len(suffix)])
        wins = window_bounds(n, room, overlap)
        for a, b in wins:
            ids = [*prefix, *text[a:b], *suffix]
            pieces.append(TokenSeq(ids, [0] * len(ids) if s.type_ids is not None else None))
        bounds.append(wins)
    return Split(pieces, first, bounds)


def combine_rows(
    split: Split, rows: Sequence[EmbeddingRow], *, normalize: bool, n_prefix: int, n_suffix: int
) -> list[EmbeddingRow]:
    """One row per input from its windows' rows (:func:`split_windows`): dense by
    :func:`combine_dense`, sparse by :func:`combine_sparse`, multi-vectors (one per position
    after the first) by :func:`stitch_rows`."""
    out = []
    for i, wins in enumerate(split.bounds):
        part = rows[split.windows_of(i)]
        if len(part) == 1:
            out.append(part[0])
            continue
        dense = sparse = multi = None
        if part[0].dense is not None:
            stack = np.stack([r.dense for r in part if r.dense is not None])
            dense = combine_dense(stack, [b - a for a, b in wins], normalize)
        if part[0].sparse is not None:
            sparse = combine_sparse([r.sparse for r in part if r.sparse is not None])
        if part[0].multivector is not None:
            mvs = [r.multivector for r in part if r.multivector is not None]
            multi = stitch_rows(mvs, wins, n_prefix - 1, n_suffix)
        out.append(EmbeddingRow(dense, sparse, multi))
    return out


def stitch_each(
    split: Split, arrays: Sequence[np.ndarray | None], n_prefix: int, n_suffix: int
) -> list[np.ndarray | None]:
    """Per input, one row per token (special tokens included) from its windows' arrays
    (``arrays[i]``: piece ``i``'s rows, or ``None`` when not computed)."""
    out: list[np.ndarray | None] = []
    for i, wins in enumerate(split.bounds):
        part = arrays[split.windows_of(i)]
        if len(part) == 1 or part[0] is None:
            out.append(part[0])
        else:
            out.append(stitch_rows([a for a in part if a is not None], wins, n_prefix, n_suffix))
    return out


def pool_span(
    ids: Sequence[int],
    hidden: np.ndarray,
    sparse: np.ndarray | None,
    multivector: np.ndarray | None,
    span: tuple[int, int],
    *,
    normalize: bool,
    special_ids: frozenset[int],
) -> EmbeddingRow:
    """A chunk's outputs from the token outputs of the whole input it sits in (late
    chunking): the mean of its tokens' hidden states (L2-normalised when the model
    normalises), each token id's largest sparse weight (special tokens and zero weights
    dropped: :func:`max_per_token`), its tokens' multi-vectors. An empty span pools every
    token."""
    lo, hi = span if span[1] > span[0] else (0, len(ids))
    mean = hidden[lo:hi].astype(np.float64).mean(axis=0)
    if normalize:
        norm = np.linalg.norm(mean)
        mean = mean / norm if norm > 0 else mean
    sparse_vec = None
    if sparse is not None:
        span_ids = np.asarray(ids[lo:hi], dtype=np.int64)
        rows = np.zeros(len(span_ids), dtype=np.int64)
        sparse_vec = max_per_token(rows, span_ids, sparse[lo:hi], 1, drop_ids=special_ids)[0]
    mv = None if multivector is None else multivector[lo:hi].copy()
    return EmbeddingRow(mean.astype(np.float32), sparse_vec, mv)


# -- long passages in rerankers ----------------------------------------------------------------

LongPassage = Literal["truncate", "max", "mean"]
LONG_PASSAGES: tuple[LongPassage, ...] = ("truncate", "max", "mean")


def check_long_passage(policy: object) -> LongPassage:
    """``policy`` when it is one of :data:`LONG_PASSAGES`, else an error naming the choices."""
    return _one_of(policy, LONG_PASSAGES, "long_passage")


def aggregate_windows(scores: np.ndarray, owner: np.ndarray, n: int, how: LongPassage) -> np.ndarray:
    """One score per pair from its windows' scores (``owner[i]``: the pair window ``i``
    belongs to; every pair owns at least one): the largest, or the mean. ``scores`` may carry
    more columns (one per layer); each is aggregated alone."""
    flat = scores.reshape(scores.shape[0], -1).astype(np.float64)
    if how == "mean":
        sums = np.zeros((n, flat.shape[1]))
        np.add.at(sums, owner, flat)
        out = sums / np.bincount(owner, minlength=n)[:, None]
    else:
        out = np.full((n, flat.shape[1]), -np.inf)
        np.maximum.at(out, owner, flat)
    return out.reshape((n, *scores.shape[1:])).astype(np.float32)
