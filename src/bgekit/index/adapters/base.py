"""Front for vector databases: bgekit chunks, encodes and collapses; the database stores and searches.

Use it to scale past one machine: point a backend at a Milvus or Qdrant server (or cluster)
instead of a local file/folder; nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from bgekit.errors import InputError
from bgekit.images import Item, check_items
from bgekit.index.chunking import Chunk, best_chunk_per_document, one_chunk_each
from bgekit.index.documents import AddReport, Document, check_documents, without_empty
from bgekit.index.rows import ChunkSettings, chunk_rows, encoded_chunk_rows
from bgekit.index.store import IndexConfig
from bgekit.inputs import check_texts
from bgekit.models import Embedder
from bgekit.retrieval.core import HybridConfig, check_mode, chunk_depth
from bgekit.retrieval.filters import Filter, FilterSpec
from bgekit.types import Encoded, Hit, OutputKind, SearchMode, TokenSeq


class Backend(Protocol):
    """A vector database collection holding one row per chunk."""

    modes: tuple[str, ...]
    fusions: tuple[str, ...]  # what its hybrid search can fuse by; the first one stands in for "auto"

    def create(self, outputs: tuple[OutputKind, ...], dims: dict[str, int]) -> None: ...

    def existing(self, doc_ids: Sequence[str]) -> set[str]: ...

    def upsert(self, docs: Sequence[Document], chunks: Sequence[Chunk], enc: Encoded) -> None: ...

    def delete(self, doc_ids: Sequence[str]) -> None: ...

    def search(
        self, q: Encoded, qi: int, mode: str, limit: int, hybrid: HybridConfig, where: Filter
    ) -> list[Hit]:
        """The best ``limit`` chunks of the documents ``where`` lets through (the filter
        passed down to the database's own)."""
        ...

    def close(self) -> None: ...


class VectorDBIndex:
    """:class:`~bgekit.index.Index`'s interface (add, delete, search) over a :class:`Backend`."""

    def __init__(self, embedder: Embedder, backend: Backend, config: IndexConfig | None = None):
        self.embedder = embedder
        self.backend = backend
        self.config = config or IndexConfig()
        missing = [o for o in self.config.outputs if o not in embedder.info.heads]
        if missing:
            raise InputError(f"{embedder.info.name} cannot give {', '.join(missing)}")
        self.outputs: tuple[OutputKind, ...] = tuple(
            o for o in ("dense", "sparse", "multivector") if o in self.config.outputs
        )
        dims = {"dense": embedder.info.hidden_size}
        if embedder.info.multivector_dim is not None:
            dims["multivector"] = embedder.info.multivector_dim
        backend.create(self.outputs, dims)

    def add(self, documents: Sequence[Document]) -> AddReport:
        """As :meth:`Index.add` (the same rows: :func:`~bgekit.index.rows.chunk_rows`):
        documents with no text, or over ``max_document_chars`` with ``oversize="skip"``, are
        skipped and counted."""
        docs, skipped = without_empty(check_documents(documents))
        self._refuse_taken(docs)  # before anything is encoded
        rows = chunk_rows(docs, self.embedder, ChunkSettings.of(self.config), self.outputs)
        if rows.docs:
            self.backend.upsert(rows.docs, rows.chunks, rows.enc)
        return AddReport(len(rows.docs), len(rows.chunks), skipped, rows.oversized)

    def add_encoded(
        self, documents: Sequence[Document], enc: Encoded, *, chunks: Sequence[Chunk] | None = None
    ) -> AddReport:
        """As :meth:`Index.add_encoded`: documents encoded elsewhere (e.g. a shard of
        :func:`bgekit.distributed.encode_on_ray`), one row each and one chunk each, or with
        ``chunks`` one row per chunk; no re-encoding."""
        if chunks is None:
            docs, rows, enc, skipped = one_chunk_each(documents, enc, self.outputs)
        else:
            docs, rows, enc = encoded_chunk_rows(documents, chunks, enc, self.outputs)
            skipped = 0
        self._refuse_taken(docs)
        if docs:
            self.backend.upsert(docs, rows, enc)
        return AddReport(len(docs), len(rows), skipped)

    def _refuse_taken(self, docs: Sequence[Document]) -> None:
        taken = self.backend.existing([d.id for d in docs])
        if taken:
            raise InputError(f"document id {sorted(taken)[0]!r} is already in the index")

    def delete(self, ids: Sequence[str]) -> None:
        unknown = set(ids) - self.backend.existing(ids)
        if unknown:
            raise InputError(f"not in the index: {', '.join(map(repr, sorted(unknown)[:5]))}")
        self.backend.delete(ids)

    def search(
        self,
        queries: Sequence[Item],
        k: int = 10,
        *,
        mode: SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
        tokens: Sequence[TokenSeq] | None = None,
        where: FilterSpec = None,
    ) -> list[list[Hit]]:
        """The ``k`` best documents per query; ``tokens``: the queries already tokenised
        with the config's task (``embedder.tokenize(queries, kind="query", task=...)``), not
        tokenised again; ``where``: a metadata filter, applied by the database."""
        where = Filter.parse(where)
        if check_mode(mode) not in self.backend.modes:
            raise InputError(f"{type(self.backend).__name__} does not search in {mode} mode")
        if mode in ("dense", "sparse", "multivector") and mode not in self.outputs:
            raise InputError(f"this index holds no {mode} vectors (it holds: {', '.join(self.outputs)})")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        images = "image" in self.embedder.info.modalities
        texts = check_items(queries, "queries") if images else check_texts(queries, "queries")
        cfg = hybrid or HybridConfig()
        if mode == "hybrid":
            fusion = cfg.fusion_for(self.outputs)
            if cfg.fusion == "auto" and fusion not in self.backend.fusions:
                fusion = self.backend.fusions[0]  # type: ignore[assignment]
            cfg = dataclasses.replace(cfg, fusion=fusion)
        task = self.config.task
        seqs = self.embedder.tokenize(texts, kind="query", task=task) if tokens is None else tokens
        q = self.embedder.encode_tokens(seqs, outputs=self.outputs)
        limit = chunk_depth(k)
        return [
            best_chunk_per_document(self.backend.search(q, i, mode, limit, cfg, where), k)
            for i in range(len(texts))
        ]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> VectorDBIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
