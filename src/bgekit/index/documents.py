"""Documents in, chunks out: reading sources and splitting long texts by tokens."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgekit.errors import InputError
from bgekit.inputs import passage_text
from bgekit.io import iter_jsonl
from bgekit.models.tokenizer import TextTokenizer
from bgekit.types import Encoded, Hit, OutputKind

if TYPE_CHECKING:
    from bgekit.models import Embedder

TEXT_SUFFIXES = (".txt", ".md")


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """One document: a unique id, its text, an optional title and metadata (JSON values)."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AddReport:
    """What one add did: documents added, their chunks, and documents skipped because they
    hold no text (empty or whitespace only)."""

    documents: int
    chunks: int
    skipped: int


def without_empty(docs: Sequence[Document]) -> tuple[list[Document], int]:
    """The documents that hold text, and how many did not (logged: they are skipped)."""
    kept = [d for d in docs if d.text.strip()]
    skipped = len(docs) - len(kept)
    if skipped:
        logger.warning("skipped %d of %d documents with no text", skipped, len(docs))
    return kept, skipped


def check_documents(
    docs: Iterable[Document], existing: set[str] | frozenset[str] = frozenset()
) -> list[Document]:
    """Refuse documents that are not :class:`Document` values, without an id, with ids seen
    twice or already indexed (documents with no text pass: :meth:`Index.add` skips them)."""
    out = []
    seen = set(existing)
    for i, d in enumerate(docs):
        if not isinstance(d, Document):
            raise InputError(f"documents[{i}] is {type(d).__name__}, expected a Document")
        if not d.id:
            raise InputError(f"documents[{i}] has an empty id")
        if d.id in seen:
            where = "already in the index" if d.id in existing else "given twice"
            raise InputError(f"document id {d.id!r} is {where}")
        seen.add(d.id)
        out.append(d)
    return out


def _from_jsonl(path: Path) -> list[Document]:
    docs = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object")
        key = obj.get("id", obj.get("_id"))
        text = obj.get("text")
        if key is None or not isinstance(text, str):
            raise InputError(f'{path}:{n}: expected "id" (or "_id") and a "text" string')
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InputError(f'{path}:{n}: "metadata" must be an object')
        docs.append(Document(str(key), text, str(obj.get("title") or ""), meta))
    return docs


def read_source(source: str | Path) -> list[Document]:
    """A folder of .txt/.md files (id = path inside the folder, title = file name without
    suffix), or a JSONL file (``id``/``_id``, ``text``, optional ``title``, ``metadata``;
    a BEIR ``corpus.jsonl`` is one)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise InputError(f"{path} holds no {' or '.join(TEXT_SUFFIXES)} files")
        docs = []
        for p in files:
            text = p.read_text(encoding="utf-8", errors="replace")
            docs.append(Document(str(p.relative_to(path)), text, p.stem, {"path": str(p)}))
        return check_documents(docs)
    if path.is_file():
        if path.suffix.lower() not in (".jsonl", ".json"):
            raise InputError(f"{path}: give a folder of text files or a .jsonl file")
        return check_documents(_from_jsonl(path))
    raise InputError(f"no such file or folder: {path}")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: which document (by position), which piece, its text."""

    doc: int
    no: int
    text: str


def chunk_documents(
    docs: Sequence[Document], tokenizer: TextTokenizer, chunk_tokens: int, overlap: int
) -> list[Chunk]:
    """Split each document's text into windows of ``chunk_tokens`` tokens, each starting
    ``chunk_tokens - overlap`` tokens after the previous one; a short text is one chunk."""
    if chunk_tokens < 8:
        raise InputError(f"chunk_tokens must be at least 8, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise InputError(f"chunk_overlap must be in 0..{chunk_tokens - 1}, got {overlap}")
    step = chunk_tokens - overlap
    out = []
    for i, (doc, spans) in enumerate(zip(docs, tokenizer.spans([d.text for d in docs]), strict=True)):
        if len(spans) <= chunk_tokens:
            out.append(Chunk(i, 0, doc.text.strip()))
            continue
        starts = range(0, max(1, len(spans) - overlap), step)
        for no, s in enumerate(starts):
            window = spans[s : s + chunk_tokens]
            out.append(Chunk(i, no, doc.text[window[0][0] : window[-1][1]]))
            if s + chunk_tokens >= len(spans):
                break
    return out


def encoding_text(doc: Document, chunk_text: str) -> str:
    """What gets encoded for a chunk: its document's title, then the chunk."""
    return passage_text(doc.title, chunk_text)


def encode_chunks(
    docs: Sequence[Document],
    embedder: Embedder,
    outputs: tuple[OutputKind, ...],
    chunk_tokens: int | None,
    chunk_overlap: int,
) -> tuple[list[Chunk], Encoded]:
    """Chunk ``docs`` (``chunk_tokens=None``: the model's passage length less its special
    tokens, with the overlap capped at half of it for short-context models) and encode every
    chunk as a document, title first."""
    size = chunk_tokens or max(8, embedder.info.passage_max_length - embedder.tokenizer.n_special)
    overlap = chunk_overlap if chunk_tokens else min(chunk_overlap, size // 2)
    chunks = chunk_documents(docs, embedder.tokenizer, size, overlap)
    enc = embedder.encode([encoding_text(docs[c.doc], c.text) for c in chunks], outputs=outputs)
    return chunks, enc


def best_chunk_per_document(chunk_hits: Iterable[Hit], k: int) -> list[Hit]:
    """Chunk hits in score order → the first ``k`` documents, each with its best chunk."""
    out: list[Hit] = []
    seen: set[str] = set()
    for h in chunk_hits:
        if h.id in seen:
            continue
        seen.add(h.id)
        out.append(h)
        if len(out) == k:
            break
    return out
