"""Inputs to token sequences, as the model reads them: prompts applied (see
:mod:`bgekit.models.prompts`), cut to the side's limit, and laid out for the long-input
policy (MCLS, windows) or bge-en-icl's in-context layout. The engine, the heads and the
index see only the token sequences this makes."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bgekit.errors import InputError, ModelFormatError
from bgekit.images import Item, is_image_like
from bgekit.inputs import check_texts
from bgekit.models.long_input import (
    DEFAULT_OVERLAP,
    LongInputPolicy,
    Split,
    check_policy,
    mcls_capacity,
    mcls_ids,
    mcls_positions,
    split_windows,
)
from bgekit.models.prompts import ICL_SUFFIX, Prompts
from bgekit.models.settings import EmbedderSettings
from bgekit.models.tokenizer import TextTokenizer
from bgekit.types import KINDS, Kind, ModelInfo, TokenSeq

UNLIMITED = sys.maxsize  # a token limit that never cuts


class TextProcessor:
    """Texts (or token ids) to :class:`~bgekit.types.TokenSeq` for one model."""

    def __init__(self, tokenizer: TextTokenizer, info: ModelInfo, long: LongInputPolicy):
        self.tokenizer = tokenizer
        self.info = info
        self.long = long

    def input_limit(self, kind: Kind) -> int | None:
        """The most tokens an input of ``kind`` keeps before it is cut (``None``: no limit):
        the query max length for queries; for documents the passage max length under
        truncate, else the long-input policy's ``max_tokens``."""
        return self.info.query_max_length if kind == "query" else self.long.max_tokens

    def frame(self) -> tuple[list[int], list[int]]:
        """The special tokens around a text (refused at load for chunk and mcls without one)."""
        frame = self.tokenizer.frame
        if frame is None:
            raise ModelFormatError(f"{self.info.name}: its tokenizer cannot be windowed")
        return frame

    def tokenize(
        self,
        texts: Sequence[Item],
        prompts: Prompts,
        *,
        kind: Kind = "document",
        task: str | None = None,
        instruction: str | None = None,
    ) -> list[TokenSeq]:
        """Token ids with the side's instruction (the task's, or ``instruction`` for
        queries), cut to the query or passage limit; ``truncated`` marks a cut."""
        if kind not in KINDS:
            raise InputError(f"kind must be 'query' or 'document', got {kind!r}")
        items = self.texts_only(texts)
        items = prompts.apply(items, kind, task=task, instruction=instruction)
        if not items:
            return []
        limit = self.long.max_tokens
        if kind == "query":
            if prompts.examples is not None:
                return self._icl_queries(items, prompts.icl_prefix())
            limit = self.info.query_max_length
        if self.long.policy == "mcls":
            return self._mcls(self.tokenizer.ids(items), limit)
        return self.tokenizer.encode(items, UNLIMITED if limit is None else limit)

    def check_seqs(self, texts: Sequence[TokenSeq]) -> list[TokenSeq]:
        """What a fast path is checked against fp32 on at load (texts; image models add
        images)."""
        return list(texts)

    def texts_only(self, texts: object, what: str = "texts") -> list[str]:
        """``texts`` checked as a list of strings; an image among them is refused naming the
        model, which reads text only."""
        if isinstance(texts, Sequence) and not isinstance(texts, str):
            for i, t in enumerate(texts):
                if not isinstance(t, str) and is_image_like(t):
                    raise InputError(
                        f"{what}[{i}] is an image, but {self.info.name} reads text only; "
                        "image models: BGE-Visualized (BAAI/bge-visualized), BGE-VL (BAAI/BGE-VL-base, -large)"
                    )
        return check_texts(texts, what)

    def tokenize_ids(self, ids: Sequence[Sequence[int]]) -> list[TokenSeq]:
        """Documents given as token ids (no special tokens), laid out as :meth:`tokenize`
        lays out documents."""
        if self.long.policy == "mcls":
            return self._mcls(ids, self.long.max_tokens)
        limit = self.long.max_tokens
        return self.tokenizer.wrap_ids(ids, UNLIMITED if limit is None else limit)

    def long_counts(self, seqs: Sequence[TokenSeq]) -> tuple[int, int]:
        """How many of these inputs were cut, and how many the long-input policy handles
        (chunk: split into several windows; mcls: given more than one CLS token)."""
        cut = sum(s.truncated for s in seqs)
        long = self.long
        if long.policy == "chunk":
            return cut, sum(len(s) > long.window for s in seqs)
        if long.policy == "mcls":
            n_suffix = len(self.frame()[1])
            return cut, sum(len(mcls_positions(len(s), long.stride, n_suffix)) > 1 for s in seqs)
        return cut, 0

    def split(self, seqs: Sequence[TokenSeq]) -> Split:
        """Inputs as windows of the passage length (the chunk policy and late chunking)."""
        return split_windows(seqs, self.long.window, self.long.overlap, self.frame())

    def mcls_layout(self) -> tuple[int, int] | None:
        """(stride, trailing special tokens) under the MCLS policy, for the heads."""
        return (self.long.stride, len(self.frame()[1])) if self.long.policy == "mcls" else None

    def _mcls(self, ids: Sequence[Sequence[int]], limit: int | None) -> list[TokenSeq]:
        """Texts' token ids in the MCLS layout, each cut to fit ``limit`` tokens in all."""
        prefix, suffix = self.frame()
        stride = self.long.stride
        cap = mcls_capacity(UNLIMITED if limit is None else limit, stride, len(suffix))
        out = []
        for one in ids:
            full = mcls_ids(list(one)[:cap], prefix[0], stride, suffix)
            types = [0] * len(full) if self.tokenizer.with_type_ids else None
            out.append(TokenSeq(full, types, len(one) > cap))
        return out

    def _icl_queries(self, queries: list[str], prefix: str) -> list[TokenSeq]:
        """bge-en-icl's query layout: the instructed query alone is cut to the max length
        less room for ``<s>`` and ``"\\n<response></s>"``, then ``prefix + query + suffix`` is
        tokenised (the examples do not count against the query's budget)."""
        tok = self.tokenizer
        q_max = self.info.query_max_length
        room = q_max - len(tok.ids(["<s>"])[0]) - len(tok.ids([ICL_SUFFIX + "</s>"])[0])
        if room < 1:
            raise ModelFormatError(f"query max length {q_max} leaves no room for the query")
        prefix_len = len(tok.ids([prefix])[0]) if prefix else 0
        limit = (prefix_len + len(tok.ids([ICL_SUFFIX])[0]) + q_max + 8) // 8 * 8 + 8
        out = []
        for ids in tok.ids(queries):
            seq = tok.encode([prefix + tok.decode(ids[:room]) + ICL_SUFFIX], limit)[0]
            out.append(TokenSeq(seq.ids, seq.type_ids, len(ids) > room or seq.truncated))
        return out


def long_input_policy(
    s: EmbedderSettings, info: ModelInfo, tokenizer: TextTokenizer, positions: int, decoder: bool
) -> LongInputPolicy:
    """The settings' long-input policy checked against the model (one-line errors)."""
    policy = check_policy(s.long_input)
    window = info.passage_max_length
    if s.max_input_tokens is not None and s.max_input_tokens < 3:
        raise InputError(f"max_input_tokens must be at least 3, got {s.max_input_tokens}")
    frame = tokenizer.frame
    if frame is None:
        if policy != "truncate":
            raise ModelFormatError(
                f"{info.name}: its tokenizer changes a text's tokens when it adds special ones, "
                f"so long_input={policy!r} cannot window it; use 'truncate'"
            )
        return LongInputPolicy(policy, window, 0, s.mcls_stride, window)
    room = window - len(frame[0]) - len(frame[1])
    overlap = min(DEFAULT_OVERLAP, room // 2) if s.long_input_overlap is None else s.long_input_overlap
    if not 0 <= overlap < room:
        raise InputError(
            f"long_input_overlap must be in 0..{room - 1} (a window holds {room} text tokens), got {overlap}"
        )
    if policy == "truncate":
        return LongInputPolicy(policy, window, overlap, s.mcls_stride, window)
    if policy == "chunk":
        if info.query_max_length > window:
            raise ModelFormatError(
                f"long_input='chunk' needs query_max_length ({info.query_max_length}) at most "
                f"passage_max_length ({window})"
            )
        return LongInputPolicy(policy, window, overlap, s.mcls_stride, s.max_input_tokens)
    why = (
        "is a decoder"
        if decoder
        else f"pools by {info.pooling}"
        if info.pooling != "cls"
        else "has no single CLS token before a text"
        if len(frame[0]) != 1
        else None
    )
    if why is not None:
        raise ModelFormatError(
            f"long_input='mcls' needs an encoder that pools its CLS token; {info.name} {why} "
            "(use long_input='chunk')"
        )
    if s.mcls_stride < 1:
        raise InputError(f"mcls_stride must be at least 1, got {s.mcls_stride}")
    cap = min(positions, s.max_input_tokens or positions)
    if mcls_capacity(cap, s.mcls_stride, len(frame[1])) <= s.mcls_stride:
        raise ModelFormatError(
            f"long_input='mcls' with mcls_stride {s.mcls_stride} needs room for two CLS tokens; "
            f"{info.name} takes {cap} tokens"
        )
    return LongInputPolicy(policy, window, overlap, s.mcls_stride, cap)
