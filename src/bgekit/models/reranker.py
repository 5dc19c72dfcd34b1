"""Cross-encoder rerankers (BERT / XLM-R sequence classification with one logit)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from bgekit.engine import EngineConfig, TokenBatch
from bgekit.errors import InputError, ModelFormatError
from bgekit.inputs import check_pairs, check_texts
from bgekit.models.adapters import Adapter, base_location, is_adapter_folder, read_adapter
from bgekit.models.backbones import CrossEncoderForward
from bgekit.models.loading import FolderMeta, read_folder, resolve_model_dir
from bgekit.models.long_input import (
    DEFAULT_OVERLAP,
    LongPassage,
    aggregate_windows,
    check_long_passage,
    window_bounds,
)
from bgekit.models.registry import RerankerVariant, lookup
from bgekit.models.runtime import TRAINING_ENGINE, LoadedModel, load_transformers_model
from bgekit.models.tokenizer import TextTokenizer
from bgekit.types import ModelInfo, RerankResult, TokenSeq

logger = logging.getLogger(__name__)


class _LogitRunner:
    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model
        self._device = device

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def packed(self) -> bool:  # the engine budgets real tokens for a packed backbone
        return bool(getattr(self.model, "packed", False))

    def __call__(self, batch: TokenBatch) -> list[float]:
        return self.model(batch).float().cpu().numpy().tolist()


class Builder(Protocol):
    """Builds one reranker variant from its resolved folder (``adapter``: merged into it)."""

    def __call__(
        self,
        name: str,
        path: Path,
        meta: FolderMeta,
        variant: RerankerVariant,
        info: ModelInfo,
        engine: EngineConfig | None,
        *,
        adapter: Adapter | None = None,
    ) -> Reranker: ...


_BUILDERS: dict[str, Builder] = {}


def register_reranker_builder(variants: Sequence[RerankerVariant], builder: Builder) -> None:
    """Make :func:`load_reranker` build ``variants`` with ``builder`` (the LLM rerankers
    register themselves; the loader never imports its subclasses)."""
    for v in variants:
        _BUILDERS[v] = builder


def reranker_variant(meta: FolderMeta, known: RerankerVariant | None) -> RerankerVariant | None:
    """Which reranker a folder holds, or ``None`` when it is not one."""
    if known is not None and known != "cross_encoder":
        return known
    model_type = str(meta.config.get("model_type", ""))
    if model_type == "minicpm":
        return "layerwise"
    if model_type == "cost_wise_gemma":
        return "lightweight"
    if meta.architecture.endswith("ForCausalLM"):
        return "yes_no"
    if meta.is_cross_encoder:
        return "cross_encoder"
    return None


def reranker_info(
    name: str, meta: FolderMeta, pooling: str, query_max_length: int, max_length: int, known_as: str | None
) -> ModelInfo:
    """What a loaded reranker is (every variant)."""
    return ModelInfo(
        name=name,
        path=str(meta.path),
        task="reranker",
        model_type=str(meta.config.get("model_type", "?")),
        architecture=meta.architecture,
        hidden_size=int(meta.config.get("hidden_size", 0)),
        pooling=pooling,
        normalize=False,
        query_instruction="",
        query_max_length=query_max_length,
        passage_max_length=max_length,
        heads=(),
        known_as=known_as,
        pair_max_length=max_length,
    )


def reranker_lengths(
    meta: FolderMeta, max_length: int | None, query_max_length: int | None
) -> tuple[int, int]:
    """The pair and query limits: ``max_length`` defaults to 512 (or the model's limit when
    lower), the query to 3/4 of it (the reference cross-encoder's rule)."""
    positions = meta.max_positions
    if max_length is None:
        max_length = min(512, positions)
    q_max = query_max_length if query_max_length is not None else max_length * 3 // 4
    if not 4 <= max_length <= positions:
        raise ModelFormatError(f"max_length {max_length} is outside 4..{positions} for this model")
    if not 1 <= q_max < max_length:
        raise ModelFormatError(f"query_max_length {q_max} must be in 1..{max_length - 1}")
    return max_length, q_max


def load_reranker(
    name_or_path: str,
    *,
    revision: str | None = None,
    max_length: int | None = None,
    query_max_length: int | None = None,
    engine: EngineConfig | None = None,
    long_passage: LongPassage = "truncate",
    passage_overlap: int = DEFAULT_OVERLAP,
    training: bool = False,
) -> Reranker:
    """The one reranker loader: finds the folder, detects the variant (cross-encoder, yes/no,
    layer-wise, lightweight), resolves the lengths, then builds it. A pair holds at most
    ``max_length`` tokens (512, or the model's limit when lower); the query keeps at most
    ``query_max_length`` (3/4 of ``max_length`` unless given). A passage that does not fit
    is cut (``long_passage="truncate"``), or scored as windows of what fits, consecutive
    windows sharing ``passage_overlap`` tokens (at most half a window), each paired with the
    query: the pair's score is the best window's (``"max"``) or their mean (``"mean"``).

    ``training``: a cross-encoder to fine-tune (what ``train_reranker`` starts from), on
    :data:`~bgekit.models.runtime.TRAINING_ENGINE` (exact fp32, transformers' forward); an
    encoder checkpoint becomes a cross-encoder with a fresh one-logit head, an LLM reranker
    is refused. Its weights are checked as for inference.

    ``name_or_path`` may be a LoRA adapter folder (``bgekit train reranker --lora``, or
    peft's) of an LLM reranker: its base loads (``bgekit_adapter.json``'s folder, else the
    base peft records) with the adapter merged into the weights before anything else."""
    long_passage = check_long_passage(long_passage)
    if passage_overlap < 0:
        raise InputError(f"passage_overlap must be at least 0, got {passage_overlap}")
    if training and engine is not None:
        raise InputError(
            "training=True loads on the training engine (fp32, transformers); leave engine unset"
        )
    adapter = read_adapter(name_or_path) if is_adapter_folder(name_or_path) else None
    base = name_or_path if adapter is None else base_location(adapter)
    path = resolve_model_dir(base, revision)
    meta = read_folder(path)
    known = lookup(base, str(path))
    variant = reranker_variant(meta, known[1].reranker_variant if known else None)
    fresh_head = training and variant is None
    if training:
        if variant not in (None, "cross_encoder"):
            raise ModelFormatError(
                f"{name_or_path} is a {variant} LLM reranker; bgekit fine-tunes cross-encoders only"
            )
        variant, engine = "cross_encoder", TRAINING_ENGINE
    if variant is None:
        raise ModelFormatError(
            f"{name_or_path} is not a cross-encoder ({meta.architecture}); load it with Embedder"
        )
    config = meta.config
    if (
        variant == "cross_encoder"
        and not fresh_head
        and int(config.get("num_labels", len(config.get("id2label") or {0: 0}))) != 1
    ):
        raise ModelFormatError(f"{name_or_path}: a reranker needs one output logit (num_labels=1)")
    max_length, q_max = reranker_lengths(meta, max_length, query_max_length)
    pooling = "cls" if variant == "cross_encoder" else "last_token"
    # an embedder's registry entry (bge-small-en-v1.5 given a fresh head), or the base of an
    # adapter, is not this model's name
    known_as = known[0] if known and not fresh_head and adapter is None else None
    info = reranker_info(name_or_path, meta, pooling, q_max, max_length, known_as)
    info = dataclasses.replace(info, long_input=long_passage)
    build = _BUILDERS.get(variant)
    if build is None:
        raise ModelFormatError(f"{name_or_path}: no loader for {variant} rerankers in this installation")
    model = build(name_or_path, path, meta, variant, info, engine, adapter=adapter)
    if fresh_head:  # said once loaded: a damaged folder's error is the only line
        logger.info("%s has no classification head; added a fresh one-logit head", name_or_path)
    if long_passage != "truncate" and not model.can_window():
        raise ModelFormatError(
            f"{name_or_path}: its tokenizer changes a pair's tokens when it adds special ones, so "
            f"long_passage={long_passage!r} cannot window passages; use 'truncate'"
        )
    model.passage_overlap = passage_overlap
    return model


class WindowParts(NamedTuple):
    """One pair, for windowing its passage: the query's ids as the pair holds them, the ids
    every passage window starts with, the passage's own ids, the tokens a window (its start
    included) may take beside the query, and whether the query was cut."""

    query: list[int]
    head: list[int]
    passage: list[int]
    room: int
    query_cut: bool


@dataclass(frozen=True)
class PairPlan:
    """(query, passage) pairs as model inputs: ``seqs`` to score, ``owner[i]`` the pair
    ``seqs[i]`` belongs to; ``truncated``: pairs cut; ``windowed``: pairs whose passage runs
    as several windows."""

    seqs: list[TokenSeq]
    owner: np.ndarray
    pairs: int
    truncated: int
    windowed: int
    how: LongPassage = "truncate"

    def combine(self, scores: np.ndarray) -> np.ndarray:
        """Per-input scores (rows; more columns allowed) -> one row per pair."""
        if not self.windowed:
            return scores
        return aggregate_windows(scores, self.owner, self.pairs, self.how)


def _build_cross_encoder(
    name: str,
    path: Path,
    meta: FolderMeta,
    variant: RerankerVariant,
    info: ModelInfo,
    engine: EngineConfig | None,
    *,
    adapter: Adapter | None = None,
) -> Reranker:
    """The one place a cross-encoder is built, for scoring and for fine-tuning: checked
    weights (a damaged folder is one :class:`ModelFormatError`), its head fresh when the
    folder holds an encoder (only :func:`load_reranker` with ``training=True`` gets here
    with one)."""
    if adapter is not None:
        raise ModelFormatError(
            f"{adapter.folder}: a LoRA adapter of a cross-encoder; bgekit loads adapters of LLM rerankers"
        )
    with_types = int(meta.config.get("type_vocab_size", 0)) > 1
    tokenizer = TextTokenizer.from_folder(path, with_type_ids=with_types)
    engine = engine or EngineConfig()
    hf = load_transformers_model(path, cross_encoder=True, fresh_head=not meta.is_cross_encoder)
    return Reranker(CrossEncoderForward(hf, engine.backend), tokenizer, info, engine)


class Reranker(LoadedModel):
    """Scores (query, passage) pairs with a cross-encoder; higher is more relevant."""

    passage_overlap: int = DEFAULT_OVERLAP

    @property
    def long_passage(self) -> LongPassage:
        """What happens to a passage that does not fit (see :func:`load_reranker`)."""
        return check_long_passage(self.info.long_input)

    @property
    def max_pair_length(self) -> int:
        """Tokens a (query, passage) pair holds at most."""
        n = self.info.pair_max_length
        assert n is not None, "a reranker's info sets pair_max_length"
        return n

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        max_length: int | None = None,
        query_max_length: int | None = None,
        engine: EngineConfig | None = None,
        long_passage: LongPassage = "truncate",
        passage_overlap: int = DEFAULT_OVERLAP,
    ) -> Reranker:
        """:func:`load_reranker`: a cross-encoder, or an LLM reranker (yes/no, layer-wise,
        lightweight) as an :class:`~bgekit.models.llm_reranker.LLMReranker`, or a LoRA
        adapter folder of one (yes/no, layer-wise)."""
        return load_reranker(
            name_or_path,
            revision=revision,
            max_length=max_length,
            query_max_length=query_max_length,
            engine=engine,
            long_passage=long_passage,
            passage_overlap=passage_overlap,
        )

    def score(self, pairs: Sequence[tuple[str, str]], *, normalize: bool = False) -> np.ndarray:
        """One float32 score per pair: the logit, or its sigmoid when ``normalize`` (taken
        after the windows of a long passage are combined)."""
        plan = self.prepare(pairs)
        logits = plan.combine(self.score_tokens(plan.seqs))
        return 1.0 / (1.0 + np.exp(-logits)) if normalize else logits

    def prepare(self, pairs: Sequence[tuple[str, str]]) -> PairPlan:
        """The model inputs for ``pairs``: one per pair, or, for a passage that does not fit
        when ``long_passage`` is ``"max"`` or ``"mean"``, one per window of it."""
        if self.long_passage == "truncate":
            seqs = self.tokenize(pairs)
            plan = PairPlan(seqs, np.arange(len(seqs)), len(seqs), sum(s.truncated for s in seqs), 0)
        else:
            plan = self._windows(pairs)
        n = plan.pairs
        if plan.truncated:
            logger.info(
                "%d of %d pairs exceed %d tokens and were truncated", plan.truncated, n, self.max_pair_length
            )
        return plan

    def _windows(self, pairs: Sequence[tuple[str, str]]) -> PairPlan:
        """One input per pair that fits (the same ids :meth:`tokenize` gives it), one per
        window of a passage that does not."""
        queries, passages = check_pairs(pairs)
        out: list[TokenSeq] = []
        owner: list[int] = []
        windowed = cut = 0
        for i, part in enumerate(self._window_parts(queries, passages)):
            space = part.room - len(part.head)
            if space < 1:
                raise ModelFormatError(f"max_length {self.max_pair_length} leaves no room for the passage")
            cut += part.query_cut
            p = part.passage
            bounds = window_bounds(len(p), space, min(self.passage_overlap, space // 2))
            windowed += len(bounds) > 1
            for a, b in bounds:
                out.append(self._pair_seq(part.query, [*part.head, *p[a:b]]))
                owner.append(i)
        return PairPlan(
            out, np.asarray(owner, dtype=np.int64), len(queries), cut, windowed, self.long_passage
        )

    def can_window(self) -> bool:
        """Whether this reranker can build pairs from token ids (for passage windows)."""
        return self.tokenizer.can_wrap_pairs

    def _window_parts(self, queries: Sequence[str], passages: Sequence[str]) -> list[WindowParts]:
        """Each pair's parts for windowing its passage."""
        q_max = self.info.query_max_length
        specials = self.tokenizer.n_special_pair
        out = []
        for q, p in zip(self.tokenizer.ids(list(queries)), self.tokenizer.ids(list(passages)), strict=True):
            room = self.max_pair_length - min(len(q), q_max) - specials
            out.append(WindowParts(q[:q_max], [], p, room, len(q) > q_max))
        return out

    def _pair_seq(self, query: list[int], passage: list[int]) -> TokenSeq:
        """One model input from a query's and a passage window's ids."""
        return self.tokenizer.wrap_pair_ids(query, passage)

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[TokenSeq]:
        """Token ids of each pair, one sequence per pair, the passage cut to fit (what
        :meth:`score` feeds the model under ``long_passage="truncate"``)."""
        queries, passages = check_pairs(pairs)
        if not queries:
            return []
        return self.tokenizer.encode_pairs(
            queries, passages, self.max_pair_length, self.info.query_max_length
        )

    def score_tokens(self, seqs: Sequence[TokenSeq], *, normalize: bool = False) -> np.ndarray:
        """Score already tokenised pairs (from :meth:`tokenize`) in one engine run."""
        if not seqs:
            return np.zeros(0, dtype=np.float32)
        runners = [_LogitRunner(m, d) for m, d in self._replicas]
        logits = np.asarray(
            self._engine.run(list(seqs), runners, pad_id=self.tokenizer.pad_id, desc="reranking"),
            dtype=np.float32,
        )
        return 1.0 / (1.0 + np.exp(-logits)) if normalize else logits

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_k: int | None = None,
        normalize: bool = False,
    ) -> list[RerankResult]:
        """Passages ranked by score, best first; ties keep input order."""
        if top_k is not None and top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        items = check_texts(passages, "passages")
        scores = self.score([(query, p) for p in items], normalize=normalize)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [RerankResult(int(i), float(scores[i])) for i in order]


register_reranker_builder(("cross_encoder",), _build_cross_encoder)
