"""Embedders: dense for every encoder, plus sparse and multi-vector for BGE-M3, in one pass."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np

from bgekit.engine import EngineConfig
from bgekit.errors import InputError, MissingHeadError, ModelFormatError
from bgekit.inputs import check_pairs, check_texts
from bgekit.models.backbones import make_backbone
from bgekit.models.encoder_weights import packed_from_folder
from bgekit.models.heads import (
    POOLINGS,
    EmbedRunner,
    EncoderWithHeads,
    TokenOutputs,
    TokenRunner,
    load_linear,
)
from bgekit.models.loading import read_folder, resolve_model_dir
from bgekit.models.long_input import (
    DEFAULT_MCLS_STRIDE,
    DEFAULT_OVERLAP,
    LongInput,
    LongInputPolicy,
    Split,
    check_policy,
    combine_rows,
    mcls_capacity,
    mcls_ids,
    mcls_positions,
    split_windows,
    stitch_each,
)
from bgekit.models.registry import DECODER_TYPES, LLM_FORMAT, PREFIX_FORMAT, lookup
from bgekit.models.runtime import LoadedModel, load_transformers_model
from bgekit.models.tokenizer import TextTokenizer
from bgekit.scoring import (
    dense_pair_scores,
    maxsim_pair_scores,
    sparse_pair_scores,
    weighted_fusion,
)
from bgekit.types import (
    KINDS,
    OUTPUT_KINDS,
    EmbeddingRow,
    Encoded,
    Kind,
    ModelInfo,
    OutputKind,
    PairScores,
    TokenSeq,
)


@dataclass(frozen=True, kw_only=True)
class EmbedderSettings:
    """Overrides of what the folder and bgekit's table say; ``None`` keeps theirs.

    ``long_input`` says what happens to a document longer than ``passage_max_length`` (see
    :mod:`bgekit.models.long_input`): ``"truncate"`` cuts it (the reference behaviour);
    ``"chunk"`` encodes it as windows of the passage length sharing ``long_input_overlap``
    tokens (default 64, at most half a window) and combines them; ``"mcls"`` (CLS-pooled
    encoders) puts a CLS token before every ``mcls_stride`` tokens and averages their
    states, reading up to the model's position table. ``max_input_tokens``: under chunk and
    mcls, the longest document kept (longer ones are cut at the end and counted as
    truncated; default: no limit for chunk, the position table for mcls). Queries are cut
    at ``query_max_length`` under every policy (under mcls they get its CLS layout too).
    """

    pooling: str | None = None
    normalize: bool | None = None
    query_instruction: str | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    query_format: str | None = None
    long_input: LongInput = "truncate"
    long_input_overlap: int | None = None
    mcls_stride: int = DEFAULT_MCLS_STRIDE
    max_input_tokens: int | None = None


ICL_EXAMPLE_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"
ICL_SUFFIX = "\n<response>"

logger = logging.getLogger(__name__)
V = TypeVar("V")
UNLIMITED = sys.maxsize  # a token limit that never cuts


def _first(*values: V | None) -> V:
    """The first value that is set: explicit setting, folder, table, default."""
    for v in values:
        if v is not None:
            return v
    raise ValueError("no value set")


class Embedder(LoadedModel):
    """Encodes texts into dense, sparse and multi-vector outputs with one forward pass."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        settings: EmbedderSettings | None = None,
        engine: EngineConfig | None = None,
        examples: Sequence[Mapping[str, str]] | None = None,
    ) -> Embedder:
        """Load from a hub id or a local folder.

        Settings come from, in rising priority: defaults, bgekit's table of known BGE
        models, the folder's sentence-transformers metadata, and ``settings``. Decoder LLMs
        default to last-token pooling and the ``"Instruct: {}\nQuery: {}"`` query format.
        ``examples`` (``{"instruct", "query", "response"}`` dicts) turn on in-context
        learning for queries, as bge-en-icl does (see :meth:`set_examples`).
        """
        path = resolve_model_dir(name_or_path, revision)
        meta = read_folder(path)
        if meta.is_cross_encoder:
            raise ModelFormatError(
                f"{name_or_path} is a cross-encoder ({meta.architecture}); load it with Reranker"
            )
        known = lookup(name_or_path, str(path))
        if known is not None and known[1].task != "embedder":
            raise ModelFormatError(f"{name_or_path} is a {known[1].task}; load it with Reranker")
        s = settings or EmbedderSettings()
        k = known[1] if known else None
        config = meta.config
        hidden_size = int(config.get("hidden_size", 0))
        positions = meta.max_positions
        decoder = str(config.get("model_type", "")) in DECODER_TYPES
        default_len = min(meta.max_seq_length or positions, positions, 512 if decoder else positions)
        pooling = str(
            _first(s.pooling, meta.pooling, k.pooling if k else None, "last_token" if decoder else "cls")
        )
        query_format = str(
            _first(s.query_format, k.query_format if k else None, LLM_FORMAT if decoder else PREFIX_FORMAT)
        )
        if query_format.count("{}") != 2:
            raise ModelFormatError(f"query format {query_format!r} needs two {{}} (instruction, query)")
        if pooling not in POOLINGS:
            raise ModelFormatError(f"pooling {pooling!r} is not supported; use one of {POOLINGS}")
        colbert = load_linear(meta.colbert_head, hidden_size) if meta.colbert_head else None
        sparse = load_linear(meta.sparse_head, hidden_size) if meta.sparse_head else None
        if sparse is not None and sparse.out_features != 1:
            raise ModelFormatError(f"{meta.sparse_head} must map hidden states to one weight")
        heads: tuple[OutputKind, ...] = ("dense",)
        heads += ("sparse",) if sparse is not None else ()
        heads += ("multivector",) if colbert is not None else ()
        info = ModelInfo(
            name=name_or_path,
            path=str(path),
            task="embedder",
            model_type=str(config.get("model_type", "?")),
            architecture=meta.architecture,
            hidden_size=hidden_size,
            pooling=pooling,
            normalize=bool(_first(s.normalize, meta.normalize, k.normalize if k else None, True)),
            query_instruction=str(
                _first(s.query_instruction, meta.prompts.get("query"), k.query_instruction if k else None, "")
            ),
            query_max_length=int(
                _first(s.query_max_length, min(k.query_max_length, default_len) if k else None, default_len)
            ),
            passage_max_length=int(
                _first(s.passage_max_length, min(k.passage_max_length, positions) if k else None, default_len)
            ),
            heads=heads,
            multivector_dim=colbert.out_features if colbert is not None else None,
            known_as=known[0] if known else None,
            query_format=query_format,
        )
        for label, value in (
            ("query", info.query_max_length),
            ("passage", info.passage_max_length),
        ):
            if not 2 < value <= positions:
                raise ModelFormatError(f"{label} max length {value} is outside 3..{positions}")
        with_types = int(config.get("type_vocab_size", 0)) > 1
        tokenizer = TextTokenizer.from_folder(path, with_type_ids=with_types)
        engine = engine or EngineConfig()
        packed = packed_from_folder(path, config) if engine.backend == "auto" else None
        backbone = (
            make_backbone(load_transformers_model(path, cross_encoder=False), engine.backend)
            if packed is None
            else packed
        )
        long = _long_input_policy(s, info, tokenizer, positions, decoder)
        info = dataclasses.replace(info, long_input=long.policy)
        model = cls(EncoderWithHeads(backbone, colbert, sparse), tokenizer, info, engine)
        model.long = long
        model.icl = bool(k.icl) if k else False
        if examples is not None:
            model.set_examples(examples)
        return model

    icl: bool = False
    _icl_prefix: str = ""
    long: LongInputPolicy = LongInputPolicy("truncate", 512, 0, DEFAULT_MCLS_STRIDE, 512)

    def set_examples(self, examples: Sequence[Mapping[str, str]]) -> None:
        """In-context examples for queries (bge-en-icl): each ``{"instruct", "query",
        "response"}`` becomes ``"<instruct>{}\n<query>{}\n<response>{}"``; they are joined by
        blank lines into a prefix. An empty list keeps the ICL format without examples."""
        parts = []
        for i, ex in enumerate(examples):
            if not isinstance(ex, Mapping) or not all(isinstance(v, str) for v in ex.values()):
                raise InputError(f"examples[{i}] must be a dict of strings (instruct, query, response)")
            unknown = set(ex) - {"instruct", "query", "response"}
            if unknown:
                raise InputError(f"examples[{i}] has unknown keys {sorted(unknown)}")
            instruct = ex.get("instruct", self.info.query_instruction)
            parts.append(ICL_EXAMPLE_FORMAT.format(instruct, ex.get("query", ""), ex.get("response", "")))
        self._icl_prefix = "\n\n".join(parts) + "\n\n" if parts else ""
        self.icl = True

    # -- encoding -------------------------------------------------------------------------

    def check_outputs(self, outputs: Sequence[str]) -> tuple[OutputKind, ...]:
        """``outputs`` in canonical order, or an error naming an unknown kind or a missing head
        (the one check every entry point runs: library calls, CLI, HTTP)."""
        if isinstance(outputs, str):
            outputs = (outputs,)
        wanted = tuple(dict.fromkeys(outputs))
        for o in wanted:
            if o not in OUTPUT_KINDS:
                raise InputError(f"unknown output {o!r}; choose from {', '.join(OUTPUT_KINDS)}")
            if o not in self.info.heads:
                raise MissingHeadError(
                    f"{self.info.name} has no {o} head (no "
                    f"{'sparse_linear.pt' if o == 'sparse' else 'colbert_linear.pt'} beside the "
                    f"weights); it gives: {', '.join(self.info.heads)}"
                )
        if not wanted:
            raise InputError("outputs is empty; ask for at least one of dense, sparse, multivector")
        return tuple(o for o in OUTPUT_KINDS if o in wanted)

    def encode(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        outputs: Sequence[OutputKind] = ("dense",),
        instruction: str | None = None,
    ) -> Encoded:
        """Encode texts; queries get the query instruction (or ``instruction``) prefixed."""
        wanted = self.check_outputs(outputs)
        seqs = self.tokenize(texts, kind=kind, instruction=instruction)
        enc = self.encode_tokens(seqs, outputs=wanted)
        if enc.truncated:
            limit = self.input_limit(kind)
            logger.info("%d of %d texts exceed %s tokens and were truncated", enc.truncated, len(seqs), limit)
        if enc.chunked:
            how = "split into windows" if self.long.policy == "chunk" else "given several CLS tokens"
            logger.info("%d of %d texts were longer than the window and %s", enc.chunked, len(seqs), how)
        return enc

    def input_limit(self, kind: Kind) -> int | None:
        """The most tokens an input of ``kind`` keeps before it is cut (``None``: no limit):
        the query max length for queries; for documents the passage max length under
        truncate, else the long-input policy's ``max_tokens``."""
        return self.info.query_max_length if kind == "query" else self.long.max_tokens

    def long_counts(self, seqs: Sequence[TokenSeq]) -> tuple[int, int]:
        """How many of these inputs were cut, and how many the long-input policy handles
        (chunk: split into several windows; mcls: given more than one CLS token)."""
        cut = sum(s.truncated for s in seqs)
        long = self.long
        if long.policy == "chunk":
            return cut, sum(len(s) > long.window for s in seqs)
        if long.policy == "mcls":
            n_suffix = len(self._frame()[1])
            return cut, sum(len(mcls_positions(len(s), long.stride, n_suffix)) > 1 for s in seqs)
        return cut, 0

    def query_texts(self, texts: Sequence[str], instruction: str | None = None) -> list[str]:
        """Queries as the model reads them: each in the query format with the instruction
        (the model's own unless ``instruction`` is given), unchanged without one."""
        task = self.info.query_instruction if instruction is None else instruction
        return [self.info.query_format.format(task, t) for t in texts] if task else list(texts)

    def tokenize(
        self, texts: Sequence[str], *, kind: Kind = "document", instruction: str | None = None
    ) -> list[TokenSeq]:
        """Token ids as :meth:`encode` feeds them to the model (instruction added for
        queries, cut to the query or passage max length; ``truncated`` marks a cut)."""
        if kind not in KINDS:
            raise InputError(f"kind must be 'query' or 'document', got {kind!r}")
        if instruction is not None and kind != "query":
            raise InputError("an instruction applies to queries only (kind='query')")
        items = check_texts(texts)
        if not items:
            return []
        limit = self.long.max_tokens
        if kind == "query":
            items = self.query_texts(items, instruction)
            if self.icl:
                return self._icl_queries(items)
            limit = self.info.query_max_length
        if self.long.policy == "mcls":
            return self._mcls(self.tokenizer.ids(items), limit)
        return self.tokenizer.encode(items, UNLIMITED if limit is None else limit)

    def tokenize_ids(self, ids: Sequence[Sequence[int]]) -> list[TokenSeq]:
        """Documents given as token ids (no special tokens), laid out as :meth:`tokenize`
        lays out documents."""
        if self.long.policy == "mcls":
            return self._mcls(ids, self.long.max_tokens)
        limit = self.long.max_tokens
        return self.tokenizer.wrap_ids(ids, UNLIMITED if limit is None else limit)

    def _frame(self) -> tuple[list[int], list[int]]:
        frame = self.tokenizer.frame
        if frame is None:  # refused at load for chunk and mcls
            raise ModelFormatError(f"{self.info.name}: its tokenizer cannot be windowed")
        return frame

    def _mcls(self, ids: Sequence[Sequence[int]], limit: int | None) -> list[TokenSeq]:
        """Texts' token ids in the MCLS layout, each cut to fit ``limit`` tokens in all."""
        prefix, suffix = self._frame()
        stride = self.long.stride
        cap = mcls_capacity(UNLIMITED if limit is None else limit, stride, len(suffix))
        out = []
        for one in ids:
            full = mcls_ids(list(one)[:cap], prefix[0], stride, suffix)
            types = [0] * len(full) if self.tokenizer.with_type_ids else None
            out.append(TokenSeq(full, types, len(one) > cap))
        return out

    def _icl_queries(self, queries: list[str]) -> list[TokenSeq]:
        """bge-en-icl's query layout: the instructed query alone is cut to the max length
        less room for ``<s>`` and ``"\n<response></s>"``, then ``prefix + query + suffix`` is
        tokenised (the examples do not count against the query's budget)."""
        tok = self.tokenizer
        room = self.info.query_max_length - len(tok.ids(["<s>"])[0]) - len(tok.ids([ICL_SUFFIX + "</s>"])[0])
        if room < 1:
            raise ModelFormatError(
                f"query max length {self.info.query_max_length} leaves no room for the query"
            )
        prefix_len = len(tok.ids([self._icl_prefix])[0]) if self._icl_prefix else 0
        limit = (prefix_len + len(tok.ids([ICL_SUFFIX])[0]) + self.info.query_max_length + 8) // 8 * 8 + 8
        out = []
        for ids in tok.ids(queries):
            text = self._icl_prefix + tok.decode(ids[:room]) + ICL_SUFFIX
            seq = tok.encode([text], limit)[0]
            out.append(TokenSeq(seq.ids, seq.type_ids, len(ids) > room or seq.truncated))
        return out

    def encode_tokens(
        self, seqs: Sequence[TokenSeq], *, outputs: Sequence[OutputKind] = ("dense",)
    ) -> Encoded:
        """Encode already tokenised inputs (from :meth:`tokenize`) in one engine run."""
        wanted = self.check_outputs(outputs)
        rows = self.encode_rows(seqs, outputs=wanted)
        cut, split = self.long_counts(seqs)
        return Encoded.from_rows(rows, wanted, self.info.hidden_size, truncated=cut, chunked=split)

    def token_states(self, texts: Sequence[str], *, kind: Kind = "document") -> list[np.ndarray]:
        """Each text's last hidden states, ``(n_tokens, hidden_size)`` float32, one row per
        token including the special ones (no pooling, no head): what text-embeddings-
        inference's ``/embed_all`` returns."""
        return self.token_states_of(self.tokenize(texts, kind=kind))

    def token_states_of(self, seqs: Sequence[TokenSeq]) -> list[np.ndarray]:
        """:meth:`token_states` of tokenised inputs (under chunk, stitched over windows)."""
        outs = self._token_outputs(seqs, (), windowed=self.long.policy == "chunk")
        return [t.hidden for t in outs]

    def token_outputs(
        self, seqs: Sequence[TokenSeq], outputs: Sequence[OutputKind] = ()
    ) -> list[TokenOutputs]:
        """Each input's per-token outputs (hidden states, and the sparse weights and
        multi-vectors when asked for), special tokens included. An input longer than the
        passage window runs as overlapping windows whose token rows are stitched, each token
        taken once (what late chunking pools)."""
        return self._token_outputs(seqs, self.check_outputs(outputs) if outputs else (), windowed=True)

    def _token_outputs(
        self, seqs: Sequence[TokenSeq], outputs: Sequence[OutputKind], *, windowed: bool
    ) -> list[TokenOutputs]:
        if not seqs:
            return []
        runners = [TokenRunner(cast(EncoderWithHeads, m), d, outputs) for m, d in self._replicas]
        if not windowed:
            done: list[TokenOutputs] = self._engine.run(list(seqs), runners, pad_id=self.tokenizer.pad_id)
            return done
        split = self._split(seqs)
        outs: list[TokenOutputs] = self._engine.run(split.pieces, runners, pad_id=self.tokenizer.pad_id)
        before, after = (len(part) for part in self._frame())
        hidden, sparse, mv = (
            stitch_each(split, [getattr(t, name) for t in outs], before, after)
            for name in ("hidden", "sparse", "multivector")
        )
        return [TokenOutputs(cast(np.ndarray, h), s, m) for h, s, m in zip(hidden, sparse, mv, strict=True)]

    def _split(self, seqs: Sequence[TokenSeq]) -> Split:
        return split_windows(seqs, self.long.window, self.long.overlap, self._frame())

    def encode_rows(
        self, seqs: Sequence[TokenSeq], *, outputs: Sequence[OutputKind] = ("dense",)
    ) -> list[EmbeddingRow]:
        """One row per tokenised input, as the engine returns them (the server hands each
        request its own rows)."""
        wanted = self.check_outputs(outputs)
        if not seqs:
            return []
        if self.long.policy == "chunk":  # every window of every input in one engine run
            split = self._split(seqs)
            before, after = (len(part) for part in self._frame())
            rows = self._run_rows(split.pieces, wanted)
            return combine_rows(split, rows, normalize=self.info.normalize, n_prefix=before, n_suffix=after)
        return self._run_rows(seqs, wanted)

    def _run_rows(self, seqs: Sequence[TokenSeq], wanted: tuple[OutputKind, ...]) -> list[EmbeddingRow]:
        mcls = (self.long.stride, len(self._frame()[1])) if self.long.policy == "mcls" else None
        runners = [
            EmbedRunner(
                cast(EncoderWithHeads, model),
                device,
                pooling=self.info.pooling,
                normalize=self.info.normalize,
                outputs=wanted,
                special_ids=self.tokenizer.special_ids,
                mcls=mcls,
            )
            for model, device in self._replicas
        ]
        rows: list[EmbeddingRow] = self._engine.run(list(seqs), runners, pad_id=self.tokenizer.pad_id)
        return rows

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        outputs: Sequence[OutputKind] = ("dense",),
        instruction: str | None = None,
    ) -> Encoded:
        """``encode(texts, kind="query")``: the query instruction is prefixed."""
        return self.encode(texts, kind="query", outputs=outputs, instruction=instruction)

    def encode_corpus(self, texts: Sequence[str], *, outputs: Sequence[OutputKind] = ("dense",)) -> Encoded:
        """``encode(texts, kind="document")``: passages never get an instruction."""
        return self.encode(texts, kind="document", outputs=outputs)

    def sparse_tokens(self, vec: object) -> dict[str, float]:
        """A sparse vector as ``{token text: weight}``, for reading."""
        from bgekit.types import SparseVec

        if not isinstance(vec, SparseVec):
            raise InputError("sparse_tokens expects a SparseVec from encode(...).sparse")
        return {
            str(self.tokenizer.id_to_token(i)): w
            for i, w in zip(vec.indices.tolist(), vec.values.tolist(), strict=True)
        }

    # -- scoring --------------------------------------------------------------------------

    def compute_score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> PairScores:
        """Score (query, passage) pairs in every mode the model has.

        Each distinct text is encoded once; the combined scores use ``weights`` ordered
        (dense, sparse, multi-vector): weighted sum divided by the sum of the weights.
        """
        if len(weights) != 3:
            raise InputError(f"weights must be (dense, sparse, multivector), got {weights!r}")
        modes = self.info.heads
        queries, passages = check_pairs(pairs)
        q_uniq = list(dict.fromkeys(queries))
        p_uniq = list(dict.fromkeys(passages))
        q_enc = self.encode(q_uniq, kind="query", outputs=modes)
        p_enc = self.encode(p_uniq, kind="document", outputs=modes)
        qi = _positions(q_uniq, queries)
        pi = _positions(p_uniq, passages)
        assert q_enc.dense is not None and p_enc.dense is not None
        dense = dense_pair_scores(q_enc.dense[qi], p_enc.dense[pi])
        sparse = multi = both = every = None
        if q_enc.sparse is not None and p_enc.sparse is not None:
            sparse = sparse_pair_scores([q_enc.sparse[i] for i in qi], [p_enc.sparse[i] for i in pi])
            both = weighted_fusion([dense, sparse], weights[:2])
        if q_enc.multivector is not None and p_enc.multivector is not None:
            q_mv, p_mv = q_enc.multivector, p_enc.multivector
            multi = maxsim_pair_scores([q_mv[i] for i in qi], [p_mv[i] for i in pi])
        if sparse is not None and multi is not None:
            every = weighted_fusion([dense, sparse, multi], weights)
        return PairScores(dense=dense, sparse=sparse, multivector=multi, sparse_dense=both, all=every)


def _long_input_policy(
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


def _positions(unique: list[str], items: list[str]) -> np.ndarray:
    where = {t: i for i, t in enumerate(unique)}
    return np.array([where[t] for t in items], dtype=np.int64)
