"""Settings of the published BGE checkpoints that their folders do not state (SPEC §1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


# Query formats: ``format.format(instruction, query)`` when an instruction is set.
PREFIX_FORMAT = "{}{}"
LLM_FORMAT = "Instruct: {}\nQuery: {}"
BGE_LLM_FORMAT = "<instruct>{}\n<query>{}"
# Model families that are decoder-only LLMs (last-token pooling, LLM query format).
DECODER_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "minicpm",
        "cost_wise_gemma",
    }
)
RerankerVariant = Literal["cross_encoder", "yes_no", "layerwise", "lightweight"]


@dataclass(frozen=True)
class KnownModel:
    task: Literal["embedder", "reranker"]
    pooling: str = "cls"
    normalize: bool = True
    query_instruction: str = ""
    query_max_length: int = 512
    passage_max_length: int = 512
    query_format: str = PREFIX_FORMAT
    icl: bool = False
    reranker_variant: RerankerVariant = "cross_encoder"


def _table() -> dict[str, KnownModel]:
    table: dict[str, KnownModel] = {}
    for size in ("small", "base", "large"):
        for suffix in ("", "-v1.5"):
            table[f"bge-{size}-en{suffix}"] = KnownModel("embedder", query_instruction=EN_INSTRUCTION)
            table[f"bge-{size}-zh{suffix}"] = KnownModel("embedder", query_instruction=ZH_INSTRUCTION)
    table["bge-m3"] = KnownModel("embedder", query_max_length=512, passage_max_length=8192)
    for name in ("bge-reranker-base", "bge-reranker-large", "bge-reranker-v2-m3"):
        # The reference keeps the query to at most 3/4 of the pair's max length.
        table[name] = KnownModel("reranker", query_max_length=384, passage_max_length=512)
    table["bge-multilingual-gemma2"] = KnownModel(
        "embedder", pooling="last_token", query_format=BGE_LLM_FORMAT
    )
    table["bge-en-icl"] = KnownModel("embedder", pooling="last_token", query_format=BGE_LLM_FORMAT, icl=True)
    table["e5-mistral-7b-instruct"] = KnownModel("embedder", pooling="last_token", query_format=LLM_FORMAT)
    variants: tuple[tuple[str, RerankerVariant], ...] = (
        ("bge-reranker-v2-gemma", "yes_no"),
        ("bge-reranker-v2-minicpm-layerwise", "layerwise"),
        ("bge-reranker-v2.5-gemma2-lightweight", "lightweight"),
    )
    for name, variant in variants:
        table[name] = KnownModel(
            "reranker", query_max_length=384, passage_max_length=512, reranker_variant=variant
        )
    return table


KNOWN_MODELS: dict[str, KnownModel] = _table()


def lookup(*names: str) -> tuple[str, KnownModel] | None:
    """The first of ``names`` (hub ids or folder paths) whose last part is a known model."""
    for name in names:
        key = PurePath(name.rstrip("/\\")).name.lower()
        if key in KNOWN_MODELS:
            return key, KNOWN_MODELS[key]
    return None
