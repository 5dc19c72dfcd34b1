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
    # (name, query instruction, passage instruction) per task, and the task used by default
    tasks: tuple[tuple[str, str, str], ...] = ()
    default_task: str | None = None


# BAAI/llm-embedder's instructions (its model card and the reference's LLMEmbedder): each task
# prefixes the query and the key (passage) with its own instruction.
LLM_EMBEDDER_TASKS: tuple[tuple[str, str, str], ...] = (
    (
        "qa",
        "Represent this query for retrieving relevant documents: ",
        "Represent this document for retrieval: ",
    ),
    (
        "icl",
        "Convert this example into vector to look for useful examples: ",
        "Convert this example into vector for retrieval: ",
    ),
    (
        "chat",
        "Embed this dialogue to find useful historical dialogues: ",
        "Embed this historical dialogue for retrieval: ",
    ),
    (
        "lrlm",
        "Embed this text chunk for finding useful historical chunks: ",
        "Embed this historical text chunk for retrieval: ",
    ),
    (
        "tool",
        "Transform this user request for fetching helpful tool descriptions: ",
        "Transform this tool description for retrieval: ",
    ),
    (
        "convsearch",
        "Encode this query and context for searching relevant passages: ",
        "Encode this passage for retrieval: ",
    ),
)


def _table() -> dict[str, KnownModel]:
    table: dict[str, KnownModel] = {}
    for size in ("small", "base", "large"):
        for suffix in ("", "-v1.5"):
            table[f"bge-{size}-en{suffix}"] = KnownModel("embedder", query_instruction=EN_INSTRUCTION)
            table[f"bge-{size}-zh{suffix}"] = KnownModel("embedder", query_instruction=ZH_INSTRUCTION)
    # the reference's LLMEmbedder reads queries up to 256 tokens and keys up to 512
    table["llm-embedder"] = KnownModel(
        "embedder", query_max_length=256, tasks=LLM_EMBEDDER_TASKS, default_task="qa"
    )
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
