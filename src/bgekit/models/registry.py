"""Settings of the published BGE checkpoints that their folders do not state (SPEC §1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


@dataclass(frozen=True)
class KnownModel:
    task: Literal["embedder", "reranker"]
    pooling: str = "cls"
    normalize: bool = True
    query_instruction: str = ""
    query_max_length: int = 512
    passage_max_length: int = 512


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
    return table


KNOWN_MODELS: dict[str, KnownModel] = _table()


def lookup(*names: str) -> tuple[str, KnownModel] | None:
    """The first of ``names`` (hub ids or folder paths) whose last part is a known model."""
    for name in names:
        key = PurePath(name.rstrip("/\\")).name.lower()
        if key in KNOWN_MODELS:
            return key, KNOWN_MODELS[key]
    return None
