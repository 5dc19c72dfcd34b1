"""Cross-encoder rerankers (BERT / XLM-R sequence classification with one logit)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bgekit.engine import EngineConfig, TokenBatch
from bgekit.errors import InputError, ModelFormatError
from bgekit.inputs import check_pairs, check_texts
from bgekit.models.backbones import CrossEncoderForward
from bgekit.models.loading import FolderMeta, read_folder, resolve_model_dir
from bgekit.models.registry import RerankerVariant, lookup
from bgekit.models.runtime import LoadedModel, load_transformers_model
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

    def __call__(self, batch: TokenBatch) -> list[float]:
        return self.model(batch).float().cpu().numpy().tolist()


Builder = Callable[[str, Path, FolderMeta, RerankerVariant, ModelInfo, "EngineConfig | None"], "Reranker"]
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
) -> Reranker:
    """The one reranker loader: finds the folder, detects the variant (cross-encoder, yes/no,
    layer-wise, lightweight), resolves the lengths, then builds it. A pair holds at most
    ``max_length`` tokens (512, or the model's limit when lower); the query keeps at most
    ``query_max_length`` (3/4 of ``max_length`` unless given), the passage is cut to fit."""
    path = resolve_model_dir(name_or_path, revision)
    meta = read_folder(path)
    known = lookup(name_or_path, str(path))
    variant = reranker_variant(meta, known[1].reranker_variant if known else None)
    if variant is None:
        raise ModelFormatError(
            f"{name_or_path} is not a cross-encoder ({meta.architecture}); load it with Embedder"
        )
    config = meta.config
    if (
        variant == "cross_encoder"
        and int(config.get("num_labels", len(config.get("id2label") or {0: 0}))) != 1
    ):
        raise ModelFormatError(f"{name_or_path}: a reranker needs one output logit (num_labels=1)")
    max_length, q_max = reranker_lengths(meta, max_length, query_max_length)
    pooling = "cls" if variant == "cross_encoder" else "last_token"
    info = reranker_info(name_or_path, meta, pooling, q_max, max_length, known[0] if known else None)
    build = _BUILDERS.get(variant)
    if build is None:
        raise ModelFormatError(f"{name_or_path}: no loader for {variant} rerankers in this installation")
    return build(name_or_path, path, meta, variant, info, engine)


def _build_cross_encoder(
    name: str,
    path: Path,
    meta: FolderMeta,
    variant: RerankerVariant,
    info: ModelInfo,
    engine: EngineConfig | None,
) -> Reranker:
    with_types = int(meta.config.get("type_vocab_size", 0)) > 1
    tokenizer = TextTokenizer.from_folder(path, with_type_ids=with_types)
    engine = engine or EngineConfig()
    model = CrossEncoderForward(load_transformers_model(path, cross_encoder=True), engine.backend)
    return Reranker(model, tokenizer, info, engine)


class Reranker(LoadedModel):
    """Scores (query, passage) pairs with a cross-encoder; higher is more relevant."""

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
    ) -> Reranker:
        """:func:`load_reranker`: a cross-encoder, or an LLM reranker (yes/no, layer-wise,
        lightweight) as an :class:`~bgekit.models.llm_reranker.LLMReranker`."""
        return load_reranker(
            name_or_path,
            revision=revision,
            max_length=max_length,
            query_max_length=query_max_length,
            engine=engine,
        )

    def score(self, pairs: Sequence[tuple[str, str]], *, normalize: bool = False) -> np.ndarray:
        """One float32 score per pair: the logit, or its sigmoid when ``normalize``."""
        seqs = self.tokenize(pairs)
        cut = sum(s.truncated for s in seqs)
        if cut:
            logger.info(
                "%d of %d pairs exceed %d tokens and were truncated",
                cut,
                len(seqs),
                self.max_pair_length,
            )
        return self.score_tokens(seqs, normalize=normalize)

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[TokenSeq]:
        """Token ids of each pair as :meth:`score` feeds them to the model."""
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
