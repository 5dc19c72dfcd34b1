"""Shards into an index: the embedded :class:`~bgekit.index.Index` or a Milvus / Qdrant
collection (:class:`~bgekit.index.adapters.VectorDBIndex`), with no re-encoding."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from bgekit.distributed.shards import EncodedShards, iter_shards, read_shards, verify_shards
from bgekit.errors import InputError
from bgekit.index.documents import AddReport, Document
from bgekit.models import Embedder, model_fingerprint
from bgekit.types import Encoded

logger = logging.getLogger(__name__)


class EncodedTarget(Protocol):
    """What takes encoded rows: ``Index`` and ``VectorDBIndex``."""

    embedder: Embedder

    def add_encoded(self, documents: list[Document], enc: Encoded) -> AddReport: ...


def shard_documents(part: EncodedShards) -> list[Document]:
    """The records of shards kept with their texts, as documents."""
    if part.texts is None:
        raise InputError("these shards were encoded with --no-text; an index needs the texts")
    titles = part.titles or [""] * len(part.ids)
    meta = part.metadata or [{} for _ in part.ids]
    return [
        Document(i, text or "", title or "", m)
        for i, text, title, m in zip(part.ids, part.texts, titles, meta, strict=True)
    ]


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
    shards' model). ``streaming`` adds one shard at a time (a vector database's bulk load:
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
        report = target.add_encoded(shard_documents(part), part.encoded)
        documents, chunks, skipped = (
            documents + report.documents,
            chunks + report.chunks,
            skipped + report.skipped,
        )
        if streaming:
            logger.info("loaded shard %d (%d documents so far)", n + 1, documents)
    return AddReport(documents, chunks, skipped)
