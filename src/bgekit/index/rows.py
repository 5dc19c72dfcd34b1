"""The rows an index holds: documents checked, filtered, chunked and encoded by one rule
(:func:`chunk_rows`), which :meth:`Index.add <bgekit.index.Index.add>`,
:meth:`VectorDBIndex.add <bgekit.index.adapters.VectorDBIndex.add>` and the Ray encoder
(``bgekit encode --ray --as-index``) all call, so an index built from shards holds the chunks
a direct build makes; and chunk rows encoded elsewhere, checked before they are added
(:func:`encoded_chunk_rows`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from bgekit.errors import InputError
from bgekit.index.chunking import CHUNKINGS, SPLITS, Chunk, Chunking, Split, encode_chunks
from bgekit.index.documents import (
    OVERSIZE,
    Document,
    Oversize,
    check_documents,
    shown_id,
    within_size,
    without_empty,
)
from bgekit.types import Encoded, OutputKind

if TYPE_CHECKING:
    from bgekit.models import Embedder


@dataclass(frozen=True)
class ChunkSettings:
    """The part of an :class:`~bgekit.index.IndexConfig` that decides an index's rows: how
    documents are cut into chunks, which documents are taken at all, and the ``task`` whose
    passage instruction each chunk is encoded with (it also takes room in a chunk's budget).
    (Titles need no setting: every chunk is encoded with its document's title first.) Shards
    encoded as index rows record these, and an index is built from them only with the same."""

    chunk_tokens: int | None
    chunk_overlap: int
    chunking: Chunking
    max_document_chars: int | None
    oversize: Oversize
    task: str | None
    split: Split = "tokens"

    @classmethod
    def of(cls, config: Any) -> ChunkSettings:
        """The settings of an ``IndexConfig`` (or anything with these attributes)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str) -> ChunkSettings:
        """Settings read back from JSON, checked (an error names ``where``)."""
        names = [f.name for f in fields(cls)]
        if isinstance(raw, Mapping) and "split" not in raw:
            raw = {**raw, "split": "tokens"}  # written before chunks could follow the text
        if not isinstance(raw, Mapping) or sorted(raw) != sorted(names):
            raise InputError(f"{where}: chunk settings must have {', '.join(names)}")
        s = cls(**{n: raw[n] for n in names})
        ints_or_none = (s.chunk_tokens, s.max_document_chars)
        if (
            not all(v is None or (isinstance(v, int) and v > 0) for v in ints_or_none)
            or not isinstance(s.chunk_overlap, int)
            or s.chunk_overlap < 0
            or s.chunking not in CHUNKINGS
            or s.split not in SPLITS
            or s.oversize not in OVERSIZE
            or not (s.task is None or isinstance(s.task, str))
        ):
            raise InputError(f"{where}: bad chunk settings {s.to_dict()}")
        return s

    def difference(self, other: ChunkSettings) -> tuple[str, Any, Any] | None:
        """The first setting in which ``other`` differs: (name, this value, its value)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                return f.name, mine, theirs
        return None


@dataclass(frozen=True)
class IndexRows:
    """What :func:`chunk_rows` made: the documents taken, their chunks (numbering documents
    from 0 within ``docs``), one encoded row per chunk, and the documents left out for
    holding no text (``skipped``) or for being over ``max_document_chars`` (``oversized``)."""

    docs: list[Document]
    chunks: list[Chunk]
    enc: Encoded
    skipped: int
    oversized: int


def chunk_rows(
    documents: Sequence[Document],
    embedder: Embedder,
    settings: ChunkSettings,
    outputs: tuple[OutputKind, ...],
    existing: set[str] | frozenset[str] = frozenset(),
) -> IndexRows:
    """Documents → an index's rows: checked (an id in ``existing`` is an error), those with
    no text skipped, those over ``max_document_chars`` refused or skipped (``oversize``),
    then chunked and encoded (:func:`~bgekit.index.documents.encode_chunks`)."""
    docs, skipped = without_empty(check_documents(documents, existing))
    docs, oversized = within_size(docs, settings.max_document_chars, settings.oversize)
    if not docs:
        return IndexRows([], [], Encoded(), skipped, oversized)
    s = settings
    chunks, enc = encode_chunks(
        docs, embedder, outputs, s.chunk_tokens, s.chunk_overlap, s.chunking, s.task, split=s.split
    )
    return IndexRows(docs, chunks, enc, skipped, oversized)


def encoded_chunk_rows(
    documents: Sequence[Document],
    chunks: Sequence[Chunk],
    enc: Encoded,
    outputs: Sequence[OutputKind],
    existing: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Document], list[Chunk], Encoded]:
    """Chunk rows made elsewhere (e.g. by :func:`chunk_rows` on a Ray worker), checked: one
    row of ``enc`` per chunk, holding ``outputs``; each chunk names a document by its position
    in ``documents``; each document has chunks numbered 0, 1, ... in order, none of them
    empty. A document's own text is not read (its chunks carry the text an index keeps)."""
    docs = check_documents(documents, existing)
    chunks = list(chunks)
    if len(enc) != len(chunks):
        raise InputError(f"{len(chunks)} chunks but {len(enc)} encoded rows")
    missing = [o for o in outputs if o not in enc.outputs]
    if missing:
        raise InputError(f"the encoded rows hold no {', '.join(missing)} (the index stores it)")
    wrong = next((c for c in chunks if not 0 <= c.doc < len(docs)), None)
    if wrong is not None:
        raise InputError(f"a chunk names document {wrong.doc}, but {len(docs)} documents were given")
    numbers: dict[int, list[int]] = {}
    for c in chunks:
        if not c.text.strip():
            raise InputError(f"chunk {c.no} of document {shown_id(docs[c.doc].id)} has no text")
        numbers.setdefault(c.doc, []).append(c.no)
    for i, d in enumerate(docs):
        got = numbers.get(i, [])
        if got != list(range(len(got))) or not got:
            shown = ", ".join(map(str, itertools.islice(got, 8))) or "none"
            raise InputError(f"document {shown_id(d.id)} has chunks {shown}; they must be 0, 1, ... in order")
    return docs, chunks, enc
