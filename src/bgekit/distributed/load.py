"""Shards into an index: the embedded :class:`~bgekit.index.Index` or a Milvus / Qdrant
collection (:class:`~bgekit.index.adapters.VectorDBIndex`), with no re-encoding. Shards of
index rows (``encode --ray --as-index``) go in chunk by chunk, and only into an index of
the chunk settings they were made with; other shards go in one chunk per record."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from bgekit.distributed.shards import EncodedShards, ShardHeader, iter_shards, read_shards, verify_shards
from bgekit.errors import InputError
from bgekit.index.chunking import Chunk
from bgekit.index.documents import AddReport, Document
from bgekit.index.rows import ChunkSettings
from bgekit.models import Embedder, model_fingerprint
from bgekit.types import Encoded

logger = logging.getLogger(__name__)


class EncodedTarget(Protocol):
    """What takes encoded rows: ``Index`` and ``VectorDBIndex``."""

    @property
    def embedder(self) -> Embedder: ...

    config: Any  # an IndexConfig

    def add_encoded(
        self, documents: Sequence[Document], enc: Encoded, *, chunks: Sequence[Chunk] | None = None
    ) -> AddReport: ...


def shard_documents(part: EncodedShards) -> list[Document]:
    """The records of shards kept with their texts, as documents (one row each)."""
    if part.texts is None:
        raise InputError("these shards were encoded with --no-text; an index needs the texts")
    titles = part.titles or [""] * len(part.ids)
    meta = part.metadata or [{} for _ in part.ids]
    return [
        Document(i, text or "", title or "", m)
        for i, text, title, m in zip(part.ids, part.texts, titles, meta, strict=True)
    ]


def shard_chunks(part: EncodedShards) -> tuple[list[Document], list[Chunk]]:
    """The documents of shards of index rows (id, title and metadata from each one's chunk
    0; no text of their own: an index keeps its chunks' texts) and one chunk per row."""
    if part.chunks is None or part.texts is None or part.titles is None or part.metadata is None:
        raise InputError("these shards hold one row per record, not an index's rows")
    docs: list[Document] = []
    chunks: list[Chunk] = []
    pos: dict[str, int] = {}
    for j, (i, (no, a, b)) in enumerate(zip(part.ids, part.chunks, strict=True)):
        if i not in pos:
            pos[i] = len(docs)
            docs.append(Document(i, "", part.titles[j] or "", part.metadata[j]))
        chunks.append(Chunk(pos[i], no, part.texts[j] or "", (a, b)))
    return docs, chunks


def check_chunking(header: ShardHeader, config: Any, where: str) -> None:
    """Shards of index rows go only into an index (``config``: its ``IndexConfig``) of the
    chunk settings they were made with: other settings would make other chunks."""
    if header.chunking is None:
        return  # one row per record: each record one chunk, whatever the settings
    diff = header.chunking.difference(ChunkSettings.of(config))
    if diff is not None:
        name, theirs, wanted = diff
        raise InputError(
            f"{where} was chunked with {name}={theirs!r}, not the index's {name}={wanted!r}: "
            "build with the shards' chunk settings, or encode again with the index's"
        )


def check_shard_model(part: EncodedShards, embedder: Embedder, where: str) -> None:
    if part.header.kind != "document":
        raise InputError(f"{where} holds {part.header.kind} encodings; an index needs documents")
    if model_fingerprint(embedder) != part.header.fingerprint:
        raise InputError(
            f"{where} was encoded with {part.header.model}; {embedder.info.name} is a different "
            "model or uses different settings"
        )


def load_shards(target: EncodedTarget, root: str | Path, *, streaming: bool = False) -> AddReport:
    """Add every record of a finished shard folder to ``target`` (whose model must be the
    shards' model, and, for shards of index rows, whose config their chunk settings;
    :func:`check_chunking`). ``streaming`` adds one shard at a time (a vector database's bulk load:
    memory holds one shard); otherwise all rows are added at once (the embedded index).
    Every shard is checked before any row is added (streaming reads the folder twice for
    that), so a damaged shard leaves ``target`` as it was."""
    if streaming:
        verify_shards(root)
    parts = iter_shards(root) if streaming else iter([read_shards(root)])
    documents = chunks = skipped = 0
    for n, part in enumerate(parts):
        if n == 0:
            check_shard_model(part, target.embedder, str(root))
            check_chunking(part.header, target.config, str(root))
        if part.header.chunking is None:
            report = target.add_encoded(shard_documents(part), part.encoded)
        else:
            docs, rows = shard_chunks(part)
            report = target.add_encoded(docs, part.encoded, chunks=rows)
        documents, chunks, skipped = (
            documents + report.documents,
            chunks + report.chunks,
            skipped + report.skipped,
        )
        if streaming:
            logger.info("loaded shard %d (%d documents so far)", n + 1, documents)
    return AddReport(documents, chunks, skipped)
