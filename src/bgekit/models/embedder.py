"""Embedders: dense for every encoder, plus sparse and multi-vector for BGE-M3, in one pass.

An :class:`Embedder` composes the parts that each do one job: settings resolution
(:mod:`~bgekit.models.settings`), prompts (:mod:`~bgekit.models.prompts`), the processor that
turns inputs into token sequences (:mod:`~bgekit.models.processor`), the modules with their
heads (:mod:`~bgekit.models.heads`) run by the engine, and pair scoring
(:func:`bgekit.scoring.encoded_pair_scores`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import numpy as np

from bgekit.engine import EngineConfig
from bgekit.errors import InputError, MissingHeadError, ModelFormatError
from bgekit.images import ImageLimits, Item
from bgekit.inputs import check_pairs
from bgekit.models.adapters import (
    base_folder,
    is_adapter_folder,
    merge_adapter,
    read_adapter,
    recorded_kind,
    tokenizer_folder,
)
from bgekit.models.backbones import make_backbone
from bgekit.models.encoder_weights import packed_from_folder
from bgekit.models.heads import EmbedRunner, EncoderWithHeads, TokenOutputs, TokenRunner, load_linear
from bgekit.models.loading import read_folder, resolve_model_dir
from bgekit.models.long_input import LongInputPolicy, combine_rows, stitch_each
from bgekit.models.processor import TextProcessor, long_input_policy
from bgekit.models.prompts import Example, Prompts
from bgekit.models.registry import lookup
from bgekit.models.runtime import CHECK_TEXTS, LoadedModel, check_length, load_dtype, load_transformers_model
from bgekit.models.settings import EmbedderSettings, is_decoder, resolve_info
from bgekit.models.tokenizer import TextTokenizer
from bgekit.models.vision import ImageProcessor, load_image_model
from bgekit.scoring import encoded_pair_scores
from bgekit.types import EmbeddingRow, Encoded, Kind, OutputKind, Outputs, PairScores, TokenSeq

__all__ = ["Embedder", "EmbedderSettings"]

logger = logging.getLogger(__name__)
HEAD_FILES = {"sparse": "sparse_linear.pt", "multivector": "colbert_linear.pt"}


class Embedder(LoadedModel):
    """Encodes texts into dense, sparse and multi-vector outputs with one forward pass."""

    def __init__(
        self,
        model: EncoderWithHeads,
        processor: TextProcessor,
        prompts: Prompts,
        settings: EmbedderSettings,
        engine: EngineConfig | None = None,
    ):
        texts = processor.tokenizer.encode(list(CHECK_TEXTS), check_length(processor.info))
        super().__init__(model, processor.tokenizer, processor.info, engine, processor.check_seqs(texts))
        self.processor = processor
        self.prompts = prompts
        self.settings = settings  # what it was loaded with: an index manifest records them

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        settings: EmbedderSettings | None = None,
        engine: EngineConfig | None = None,
        examples: Iterable[Mapping[str, str] | Example] | None = None,
    ) -> Embedder:
        """Load from a hub id or a local folder.

        Settings come from, in rising priority: defaults, bgekit's table of known BGE
        models, the folder's sentence-transformers metadata, and ``settings``. Decoder LLMs
        default to last-token pooling and the ``"Instruct: {}\nQuery: {}"`` query format.
        ``examples`` (``{"instruct", "query", "response"}`` dicts) turn on in-context
        learning for queries, as bge-en-icl does.

        A LoRA adapter folder (peft's ``adapter_config.json`` and weights, e.g. what
        ``bgekit train embedder --lora`` writes) loads its base (the folder bgekit's training
        recorded, else ``base_model_name_or_path``) with the adapter merged into the weights
        before anything else is done to them, and the adapter's tokenizer when it has one;
        ``info.adapter`` names it.
        """
        s = settings or EmbedderSettings()
        engine = engine or EngineConfig()
        adapter = read_adapter(name_or_path) if is_adapter_folder(name_or_path) else None
        kind = recorded_kind(adapter) if adapter is not None else None
        if kind not in (None, "embedder"):
            raise ModelFormatError(f"{name_or_path} is a LoRA adapter for a {kind}; load it with Reranker")
        image_model = (
            None
            if adapter is not None
            else load_image_model(name_or_path, revision=revision, settings=s, engine=engine)
        )
        if image_model is not None:  # BGE-Visualized, BGE-VL
            model, image_processor, prompts = image_model
            if examples is not None:
                prompts = prompts.with_examples(examples)
            return cls(model, image_processor, prompts, s, engine)
        # a LoRA adapter folder: its base's folder and settings, the adapter merged below
        path = (
            resolve_model_dir(name_or_path, revision) if adapter is None else base_folder(adapter, revision)
        )
        meta = read_folder(path)
        if meta.is_cross_encoder:
            raise ModelFormatError(
                f"{name_or_path} is a cross-encoder ({meta.architecture}); load it with Reranker"
            )
        known = lookup(name_or_path, str(path)) if adapter is None else lookup(adapter.base, str(path))
        if known is not None and known[1].task != "embedder":
            raise ModelFormatError(f"{name_or_path} is a {known[1].task}; load it with Reranker")
        hidden_size = int(meta.config.get("hidden_size", 0))
        colbert = load_linear(meta.colbert_head, hidden_size) if meta.colbert_head else None
        sparse = load_linear(meta.sparse_head, hidden_size) if meta.sparse_head else None
        if sparse is not None and sparse.out_features != 1:
            raise ModelFormatError(f"{meta.sparse_head} must map hidden states to one weight")
        heads: tuple[OutputKind, ...] = ("dense",)
        heads += ("sparse",) if sparse is not None else ()
        heads += ("multivector",) if colbert is not None else ()
        info, prompts = resolve_info(
            name_or_path,
            meta,
            known,
            s,
            heads=heads,
            multivector_dim=colbert.out_features if colbert is not None else None,
        )
        with_types = int(meta.config.get("type_vocab_size", 0)) > 1
        tok_path = path if adapter is None else tokenizer_folder(adapter, path)
        tokenizer = TextTokenizer.from_folder(tok_path, with_type_ids=with_types)
        packed = (
            packed_from_folder(path, meta.config) if engine.backend == "auto" and adapter is None else None
        )
        if packed is None:
            hf_model = load_transformers_model(path, cross_encoder=False, dtype=load_dtype(engine))
            if adapter is not None:  # before any packed forward, kernel or precision change
                merge_adapter(adapter, hf_model)
                info = dataclasses.replace(info, adapter=str(adapter.folder.resolve()))
        backbone = make_backbone(hf_model, engine.backend) if packed is None else packed
        long = long_input_policy(s, info, tokenizer, meta.max_positions, is_decoder(meta))
        info = dataclasses.replace(info, long_input=long.policy)
        processor = TextProcessor(tokenizer, info, long)
        if examples is not None:
            prompts = prompts.with_examples(examples)
        return cls(EncoderWithHeads(backbone, colbert, sparse), processor, prompts, s, engine)

    # -- prompts --------------------------------------------------------------------------

    @property
    def long(self) -> LongInputPolicy:
        """The long-input policy documents are encoded under."""
        return self.processor.long

    @property
    def icl(self) -> bool:
        """Whether queries take bge-en-icl's in-context layout."""
        return self.prompts.examples is not None

    def with_examples(self, examples: Iterable[Mapping[str, str] | Example]) -> Embedder:
        """This embedder (same modules, no copy of the weights) with in-context examples for
        queries (bge-en-icl): each ``{"instruct", "query", "response"}`` becomes
        ``"<instruct>{}\n<query>{}\n<response>{}"``, joined by blank lines into a prefix. An
        empty list keeps the ICL layout without examples."""
        other = copy.copy(self)
        other.prompts = self.prompts.with_examples(examples)
        return other

    def with_task(self, task: str | None) -> Embedder:
        """This embedder (same modules) with another default task (``None``: no task)."""
        other = copy.copy(self)
        other.prompts = self.prompts.with_task(task)
        other.info = dataclasses.replace(other.info, default_task=task)
        return other

    def set_examples(self, examples: Sequence[Mapping[str, str]]) -> None:
        """Deprecated: use :meth:`with_examples` (or ``from_pretrained(examples=...)``), which
        leaves this embedder as it is."""
        warnings.warn(
            "Embedder.set_examples is deprecated; use embedder.with_examples(examples)",
            DeprecationWarning,
            stacklevel=2,
        )
        self.prompts = self.prompts.with_examples(examples)

    def query_texts(self, texts: Sequence[str], instruction: str | None = None) -> list[str]:
        """Queries as the model reads them: in the query format with the instruction (the
        model's or its task's unless ``instruction`` is given), unchanged without one."""
        return self.prompts.apply(texts, "query", instruction=instruction)

    # -- tokens ---------------------------------------------------------------------------

    def check_outputs(self, outputs: Outputs | str | Iterable[str]) -> Outputs:
        """``outputs`` checked once (an unknown kind, or a head this model lacks, is an
        error) into the :class:`~bgekit.types.Outputs` value the rooms below read."""
        wanted = Outputs.parse(outputs)
        for o in wanted:
            if o not in self.info.heads:
                raise MissingHeadError(
                    f"{self.info.name} has no {o} head (no {HEAD_FILES[o]} beside the weights); "
                    f"it gives: {', '.join(self.info.heads)}"
                )
        return wanted

    def tokenize(
        self,
        texts: Sequence[Item],
        *,
        kind: Kind = "document",
        instruction: str | None = None,
        task: str | None = None,
    ) -> list[TokenSeq]:
        """Token ids as :meth:`encode` feeds them to the model (the side's instruction
        added, cut to the query or passage max length; ``truncated`` marks a cut)."""
        return self.processor.tokenize(texts, self.prompts, kind=kind, task=task, instruction=instruction)

    def tokenize_ids(self, ids: Sequence[Sequence[int]]) -> list[TokenSeq]:
        """Documents given as token ids (no special tokens), laid out as documents are."""
        return self.processor.tokenize_ids(ids)

    def input_limit(self, kind: Kind) -> int | None:
        """The most tokens an input of ``kind`` keeps (``None``: no limit)."""
        return self.processor.input_limit(kind)

    def long_counts(self, seqs: Sequence[TokenSeq]) -> tuple[int, int]:
        """How many inputs were cut, and how many the long-input policy handled."""
        return self.processor.long_counts(seqs)

    def set_image_limits(self, limits: ImageLimits) -> None:
        """Open images under ``limits`` from now on (an image model's check of each input and
        its per-batch decoding, on every replica): what a server sets from its own config."""
        if not isinstance(self.processor, ImageProcessor):
            raise InputError(f"{self.info.name} reads text only; it has no image limits")
        self.processor.limits = limits
        for module, _ in self._replicas:  # the backbones decode each batch's images
            backbone = getattr(module, "backbone", None)
            if backbone is not None and hasattr(backbone, "limits"):
                backbone.limits = limits

    # -- encoding -------------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[Item],
        *,
        kind: Kind = "document",
        outputs: Outputs | Sequence[str] = ("dense",),
        instruction: str | None = None,
        task: str | None = None,
    ) -> Encoded:
        """Encode texts; queries get the query instruction (or ``instruction``), passages
        the passage instruction, both the ``task``'s when one is named (or the default).
        Image models (see ``info.modalities``) also take images — a path as ``Path``, bytes,
        a PIL image or :class:`~bgekit.images.ImageInput` — and image + text inputs
        (:class:`~bgekit.images.Composed`, or ``{"image": ..., "text": ...}``)."""
        wanted = self.check_outputs(outputs)
        seqs = self.tokenize(texts, kind=kind, instruction=instruction, task=task)
        enc = self.encode_tokens(seqs, outputs=wanted)
        if enc.truncated:
            limit = self.input_limit(kind)
            logger.info("%d of %d texts exceed %s tokens and were truncated", enc.truncated, len(seqs), limit)
        if enc.chunked:
            how = "split into windows" if self.long.policy == "chunk" else "given several CLS tokens"
            logger.info("%d of %d texts were longer than the window and %s", enc.chunked, len(seqs), how)
        return enc

    def encode_queries(
        self,
        texts: Sequence[Item],
        *,
        outputs: Outputs | Sequence[str] = ("dense",),
        instruction: str | None = None,
        task: str | None = None,
    ) -> Encoded:
        """``encode(texts, kind="query")``: the query instruction is prefixed."""
        return self.encode(texts, kind="query", outputs=outputs, instruction=instruction, task=task)

    def encode_corpus(
        self, texts: Sequence[Item], *, outputs: Outputs | Sequence[str] = ("dense",), task: str | None = None
    ) -> Encoded:
        """``encode(texts, kind="document")``: passages get the passage instruction, if any."""
        return self.encode(texts, kind="document", outputs=outputs, task=task)

    def encode_tokens(
        self, seqs: Sequence[TokenSeq], *, outputs: Outputs | Sequence[str] = ("dense",)
    ) -> Encoded:
        """Encode already tokenised inputs (from :meth:`tokenize`) in one engine run."""
        wanted = self.check_outputs(outputs)
        rows = self.encode_rows(seqs, outputs=wanted)
        cut, split = self.long_counts(seqs)
        return Encoded.from_rows(rows, wanted, self.info.hidden_size, truncated=cut, chunked=split)

    def encode_rows(self, seqs: Sequence[TokenSeq], *, outputs: Outputs) -> list[EmbeddingRow]:
        """One row per tokenised input, as the engine returns them (the server hands each
        request its own rows). ``outputs`` comes from :meth:`check_outputs`."""
        if not seqs:
            return []
        if self.long.policy == "chunk":  # every window of every input in one engine run
            split = self.processor.split(seqs)
            before, after = (len(part) for part in self.processor.frame())
            rows = self._run_rows(split.pieces, outputs)
            return combine_rows(split, rows, normalize=self.info.normalize, n_prefix=before, n_suffix=after)
        return self._run_rows(seqs, outputs)

    def _run_rows(self, seqs: Sequence[TokenSeq], wanted: Outputs) -> list[EmbeddingRow]:
        runners = [
            EmbedRunner(
                cast(EncoderWithHeads, model),
                device,
                pooling=self.info.pooling,
                normalize=self.info.normalize,
                outputs=wanted.kinds,
                special_ids=self.tokenizer.special_ids,
                mcls=self.processor.mcls_layout(),
            )
            for model, device in self._replicas
        ]
        rows: list[EmbeddingRow] = self._engine.run(list(seqs), runners, pad_id=self.tokenizer.pad_id)
        return rows

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
        self, seqs: Sequence[TokenSeq], outputs: Outputs | Sequence[str] = ()
    ) -> list[TokenOutputs]:
        """Each input's per-token outputs (hidden states, and the sparse weights and
        multi-vectors when asked for), special tokens included. An input longer than the
        passage window runs as overlapping windows whose token rows are stitched, each token
        taken once (what late chunking pools)."""
        kinds = self.check_outputs(outputs).kinds if len(outputs) else ()
        return self._token_outputs(seqs, kinds, windowed=True)

    def _token_outputs(
        self, seqs: Sequence[TokenSeq], outputs: tuple[OutputKind, ...], *, windowed: bool
    ) -> list[TokenOutputs]:
        if not seqs:
            return []
        runners = [TokenRunner(cast(EncoderWithHeads, m), d, outputs) for m, d in self._replicas]
        pad = self.tokenizer.pad_id
        if not windowed:
            done: list[TokenOutputs] = self._engine.run(list(seqs), runners, pad_id=pad)
            return done
        split = self.processor.split(seqs)
        outs: list[TokenOutputs] = self._engine.run(split.pieces, runners, pad_id=pad)
        before, after = (len(part) for part in self.processor.frame())
        hidden, sparse, mv = (
            stitch_each(split, [getattr(t, name) for t in outs], before, after)
            for name in ("hidden", "sparse", "multivector")
        )
        return [TokenOutputs(cast(np.ndarray, h), s, m) for h, s, m in zip(hidden, sparse, mv, strict=True)]

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
        task: str | None = None,
    ) -> PairScores:
        """Score (query, passage) pairs in every mode the model has (see
        :func:`bgekit.scoring.encoded_pair_scores`); each distinct text is encoded once."""
        if len(weights) != 3:
            raise InputError(f"weights must be (dense, sparse, multivector), got {weights!r}")
        modes = Outputs(self.info.heads)
        queries, passages = check_pairs(pairs)
        q_uniq = list(dict.fromkeys(queries))
        p_uniq = list(dict.fromkeys(passages))
        q_enc = self.encode(q_uniq, kind="query", outputs=modes, task=task)
        p_enc = self.encode(p_uniq, kind="document", outputs=modes, task=task)
        return encoded_pair_scores(
            q_enc, p_enc, _positions(q_uniq, queries), _positions(p_uniq, passages), weights
        )


def _positions(unique: list[str], items: list[str]) -> np.ndarray:
    where = {t: i for i, t in enumerate(unique)}
    return np.array([where[t] for t in items], dtype=np.int64)
