"""Documents in, chunks out: reading sources and splitting long texts by tokens."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bgekit.errors import InputError
from bgekit.inputs import passage_text
from bgekit.io import iter_jsonl, read_text
from bgekit.models.long_input import pool_span, window_bounds
from bgekit.models.tokenizer import TextTokenizer
from bgekit.types import EmbeddingRow, Encoded, Hit, OutputKind

if TYPE_CHECKING:
    from bgekit.models import Embedder

TEXT_SUFFIXES = (".txt", ".md")
UNLIMITED = 1 << 62  # a token limit that never cuts
# Metadata nested deeper than this is refused (JSON readers and writers recurse).
MAX_METADATA_DEPTH = 32
# An id longer than this is cut in messages.
SHOWN_ID_CHARS = 60


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
    oversized: int = 0  # skipped for being over the index's max_document_chars


Oversize = Literal["error", "skip"]
OVERSIZE: tuple[Oversize, ...] = ("error", "skip")
# The longest document an index takes by default (about 500,000 tokens of English).
DEFAULT_MAX_DOCUMENT_CHARS = 2_000_000


def within_size(
    docs: Sequence[Document], limit: int | None, oversize: Oversize
) -> tuple[list[Document], int]:
    """The documents of at most ``limit`` characters, and how many longer ones were skipped
    (``oversize="skip"``; ``"error"`` refuses the first, before anything is encoded)."""
    if limit is None:
        return list(docs), 0
    kept = [d for d in docs if len(d.text) <= limit]
    if len(kept) == len(docs):
        return kept, 0
    over = [d for d in docs if len(d.text) > limit]
    if oversize == "error":
        more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
        raise InputError(
            f"document {shown_id(over[0].id)} has {len(over[0].text):,} characters{more}, over the "
            f"index's limit of {limit:,} (max_document_chars): split it, raise the limit "
            "(--max-document-chars) or skip such documents (--oversize skip)"
        )
    logger.warning("skipped %d documents over %s characters", len(over), f"{limit:,}")
    return kept, len(over)


def without_empty(docs: Sequence[Document]) -> tuple[list[Document], int]:
    """The documents that hold text, and how many did not (logged: they are skipped)."""
    kept = [d for d in docs if d.text.strip()]
    skipped = len(docs) - len(kept)
    if skipped:
        logger.warning("skipped %d of %d documents with no text", skipped, len(docs))
    return kept, skipped


def shown_id(doc_id: str) -> str:
    """An id for a message: quoted, and cut when long."""
    if len(doc_id) <= SHOWN_ID_CHARS:
        return repr(doc_id)
    return f"{doc_id[:SHOWN_ID_CHARS]!r}... ({len(doc_id):,} characters)"


def _not_unicode(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (``"\\ud800"`` in JSON), which no encoder,
    tokenizer or file accepts; ``None`` when it is valid Unicode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _json_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """What makes ``value`` unusable as metadata: not JSON data, nested too deep, or text
    that is not valid Unicode."""
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_METADATA_DEPTH:
        return f"{where} is nested deeper than {MAX_METADATA_DEPTH} levels"
    if isinstance(value, str):
        at = _not_unicode(value)
        return None if at is None else f"{where} holds a lone surrogate at character {at} (not valid Unicode)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a key {key!r} that is not a string"
            problem = _json_problem(key, f"{where} key {shown_id(key)}", depth) or _json_problem(
                item, f"{where}.{key}", depth + 1
            )
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if value is None or isinstance(value, (bool, int, float)):
        return None
    return f"{where} holds a {type(value).__name__}, which is not JSON data"


def document_problem(doc: Document) -> str | None:
    """Why ``doc`` cannot be indexed (``None``: it can): an id, text and title that are
    strings of valid Unicode, and metadata that is a JSON object of bounded depth."""
    if not isinstance(doc.id, str) or not doc.id:
        return "the id is empty" if doc.id == "" else f"the id is a {type(doc.id).__name__}, not a string"
    for name in ("id", "text", "title"):
        value = getattr(doc, name)
        if not isinstance(value, str):
            return f"the {name} is a {type(value).__name__}, not a string"
        at = _not_unicode(value)
        if at is not None:
            return f"the {name} holds a lone surrogate at character {at} (not valid Unicode)"
    if not isinstance(doc.metadata, dict):
        return f"the metadata is a {type(doc.metadata).__name__}, not an object"
    return _json_problem(doc.metadata, "metadata")


def check_documents(
    docs: Iterable[Document], existing: set[str] | frozenset[str] = frozenset()
) -> list[Document]:
    """Refuse documents that are not :class:`Document` values, that :func:`document_problem`
    finds wrong, with ids seen twice or already indexed (documents with no text pass:
    :meth:`Index.add` skips them)."""
    out = []
    seen: set[str] = set()
    twice: list[str] = []
    for i, d in enumerate(docs):
        if not isinstance(d, Document):
            raise InputError(f"documents[{i}] is {type(d).__name__}, expected a Document")
        problem = document_problem(d)
        if problem:
            named = "" if problem.startswith("the id") else f" ({shown_id(d.id)})"
            raise InputError(f"documents[{i}]{named}: {problem}")
        if d.id in seen:
            twice.append(d.id)
        seen.add(d.id)
        out.append(d)
    if twice:
        raise InputError(f"{_ids(twice)} given twice")
    clash = [d.id for d in out if d.id in existing]
    if clash:
        raise InputError(f"{_ids(clash)} already in the index (add with update=True / --update to replace)")
    return out


def _ids(ids: Sequence[str]) -> str:
    """``document id 'a' is`` / ``3 document ids ('a', 'b', 'c') are``."""
    if len(ids) == 1:
        return f"document id {shown_id(ids[0])} is"
    shown = ", ".join(map(shown_id, ids[:5])) + (", ..." if len(ids) > 5 else "")
    return f"{len(ids)} document ids ({shown}) are"


def _from_jsonl(path: Path, encoding: str) -> list[Document]:
    """Documents of a JSONL file, each checked as it is read: an error names the line."""
    docs = []
    first_line: dict[str, int] = {}
    for n, obj in iter_jsonl(path, encoding):
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object")
        key = obj.get("id", obj.get("_id"))
        text = obj.get("text")
        if key is None or not isinstance(text, str):
            raise InputError(f'{path}:{n}: expected "id" (or "_id") and a "text" string')
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InputError(f'{path}:{n}: "metadata" must be an object')
        title = obj.get("title") or ""
        doc = Document(str(key), text, title if isinstance(title, str) else str(title), meta)
        problem = document_problem(doc)
        if problem:
            raise InputError(f"{path}:{n}: {problem}")
        if doc.id in first_line:
            raise InputError(
                f"{path}:{n}: document id {shown_id(doc.id)} was already given on line {first_line[doc.id]}"
            )
        first_line[doc.id] = n
        docs.append(doc)
    return docs


def is_binary(path: Path) -> bool:
    """A NUL byte in the first 8 KiB: not text (an executable, an archive, an image)."""
    with path.open("rb") as f:
        return b"\x00" in f.read(8192)


def _text_file(path: Path, doc_id: str, encoding: str) -> Document:
    text = read_text(path, encoding)
    return Document(doc_id, text, path.stem, {"path": str(path)})


def read_source(source: str | Path, *, encoding: str = "utf-8") -> list[Document]:
    """Documents from a folder of .txt/.md files (id = path inside the folder, title = file
    name without suffix), one .txt/.md file, or a JSONL file (``id``/``_id``, ``text``,
    optional ``title``, ``metadata``; a BEIR ``corpus.jsonl`` is one).

    Files that are not text (a NUL byte in their first 8 KiB) are skipped with a warning
    that counts them; a file that is not valid ``encoding`` is an error naming it and the
    byte. A source with no documents at all is an error: there is nothing to index."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        binary = [p for p in files if is_binary(p)]
        if binary:
            names = ", ".join(str(p.relative_to(path)) for p in binary[:5])
            logger.warning("skipped %d files that are not text: %s", len(binary), names)
        for p in files:
            if _not_unicode(str(p)) is not None:  # undecodable bytes come back as lone surrogates
                raise InputError(
                    f"{path}: the file name {os.fsencode(p.relative_to(path))!r} is not valid UTF-8; "
                    "rename it (convmv can) or move it out of the folder"
                )
        docs = [_text_file(p, str(p.relative_to(path)), encoding) for p in files if p not in binary]
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            docs = _from_jsonl(path, encoding)
        elif suffix in TEXT_SUFFIXES:
            if is_binary(path):
                raise InputError(f"{path} is not a text file")
            docs = [_text_file(path, path.name, encoding)]
        else:
            raise InputError(f"{path}: give a folder of text files, a .txt/.md file or a .jsonl file")
    else:
        raise InputError(f"no such file or folder: {path}")
    if not docs:
        raise InputError(
            f"nothing to index: {path} holds no {' or '.join(TEXT_SUFFIXES)} text or JSONL documents"
        )
    return check_documents(docs)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: which document (by position), which piece, its text, and its
    ``[start, stop)`` among the tokens of the document's text."""

    doc: int
    no: int
    text: str
    tokens: tuple[int, int] = (0, 0)


def one_chunk_each(
    documents: Sequence[Document],
    enc: Encoded,
    outputs: Sequence[OutputKind],
    existing: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Document], list[Chunk], Encoded, int]:
    """Documents encoded elsewhere, one row of ``enc`` each, as one chunk each: the documents
    that hold text, their chunks, their rows, and how many were skipped for having none."""
    docs = check_documents(documents, existing)
    if len(enc) != len(docs):
        raise InputError(f"{len(docs)} documents but {len(enc)} encoded rows")
    missing = [o for o in outputs if o not in enc.outputs]
    if missing:
        raise InputError(f"the encoded rows hold no {', '.join(missing)} (the index stores it)")
    kept = [i for i, d in enumerate(docs) if d.text.strip()]
    chosen = [docs[i] for i in kept]
    if len(chosen) < len(docs):
        logger.warning("skipped %d of %d documents with no text", len(docs) - len(chosen), len(docs))
    chunks = [Chunk(i, 0, d.text) for i, d in enumerate(chosen)]
    return chosen, chunks, enc.select(kept), len(docs) - len(chosen)


# Texts longer than this are tokenised for chunking in pieces of about this many characters,
# cut at whitespace, so that the tokenizer's working memory does not grow with a document.
SPAN_PIECE_CHARS = 1 << 16


def _pieces(text: str) -> list[int]:
    """Where to cut ``text`` into pieces of at most :data:`SPAN_PIECE_CHARS` characters: just
    after whitespace where there is some (no token crosses a cut), else hard."""
    cuts = [0]
    while len(text) - cuts[-1] > SPAN_PIECE_CHARS:
        lo, hi = cuts[-1], cuts[-1] + SPAN_PIECE_CHARS
        at = max(text.rfind(c, lo + 1, hi) for c in " \n\t")
        cuts.append(at + 1 if at > lo else hi)
    return cuts


def token_spans(tokenizer: TextTokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text's token character spans, ``(n_tokens, 2)`` int64 (16 bytes a token). Long
    texts are tokenised in pieces (:func:`_pieces`) and the pieces in batches of about
    :data:`SPAN_PIECE_CHARS` x 16 characters, so memory follows the spans kept, not the
    tokenizer's per-token objects for a whole document or corpus."""
    pieces: list[tuple[int, int, int]] = []  # (text, start, stop)
    for i, text in enumerate(texts):
        cuts = _pieces(text)
        pieces += [(i, a, b) for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True)]
    parts: list[list[np.ndarray]] = [[] for _ in texts]
    batch: list[tuple[int, int, int]] = []
    chars = 0
    for n, piece in enumerate(pieces):
        batch.append(piece)
        chars += piece[2] - piece[1]
        if n + 1 < len(pieces) and chars < 16 * SPAN_PIECE_CHARS:
            continue
        found = tokenizer.spans([texts[i][a:b] for i, a, b in batch])
        for (i, a, _), spans in zip(batch, found, strict=True):
            parts[i].append(np.asarray(spans, dtype=np.int64).reshape(-1, 2) + a)
        batch, chars = [], 0
    return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]


def chunk_documents(
    docs: Sequence[Document],
    tokenizer: TextTokenizer,
    chunk_tokens: int,
    overlap: int,
    budgets: Sequence[int] | None = None,
) -> list[Chunk]:
    """Split each document's text into windows of ``chunk_tokens`` tokens (or its own entry
    of ``budgets``), each starting ``chunk_tokens - overlap`` tokens after the previous one
    (:func:`~bgekit.models.long_input.window_bounds`); a short text is one chunk."""
    if chunk_tokens < 8:
        raise InputError(f"chunk_tokens must be at least 8, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise InputError(f"chunk_overlap must be in 0..{chunk_tokens - 1}, got {overlap}")
    out = []
    for i, (doc, spans) in enumerate(zip(docs, token_spans(tokenizer, [d.text for d in docs]), strict=True)):
        size = chunk_tokens if budgets is None else budgets[i]
        if len(spans) <= size:
            out.append(Chunk(i, 0, doc.text.strip(), (0, len(spans))))
            continue
        bounds = window_bounds(len(spans), size, overlap if overlap < size else size // 2)
        for no, (a, b) in enumerate(bounds):
            out.append(Chunk(i, no, doc.text[spans[a][0] : spans[b - 1][1]], (a, b)))
    return out


def encoding_text(doc: Document, chunk_text: str) -> str:
    """What gets encoded for a chunk: its document's title, then the chunk."""
    return passage_text(doc.title, chunk_text)


Chunking = Literal["independent", "late"]
CHUNKINGS: tuple[Chunking, ...] = ("independent", "late")
# A chunk cut out of a text can take more tokens on its own than in place (a word cut at
# its start tokenises differently): its budget leaves this many spare.
CUT_SLACK = 2
# Late chunking runs the documents in groups of about this many tokens (bounds the memory
# the per-token outputs take before they are pooled).
LATE_GROUP_TOKENS = 1 << 16


def encode_chunks(
    docs: Sequence[Document],
    embedder: Embedder,
    outputs: tuple[OutputKind, ...],
    chunk_tokens: int | None,
    chunk_overlap: int,
    chunking: Chunking = "independent",
    task: str | None = None,
) -> tuple[list[Chunk], Encoded]:
    """Chunk ``docs`` (``chunk_tokens=None``: the model's passage length less its special
    tokens, with the overlap capped at half of it for short-context models) and encode the
    chunks. ``"independent"``: each chunk on its own as a document, title first (a chunk's
    budget leaves room for its title and the passage instruction of ``task`` (or the model's),
    so all of them fit the model together); ``"late"``: see :func:`late_chunk_rows`."""
    tok = embedder.tokenizer
    room = max(8, embedder.info.passage_max_length - tok.n_special)
    size = chunk_tokens or room
    overlap = chunk_overlap if chunk_tokens else min(chunk_overlap, size // 2)
    instruction = embedder.prompts.instruction("document", task)
    if chunking == "late":
        chunks = chunk_documents(docs, tok, size, overlap)
        rows = late_chunk_rows(docs, chunks, embedder, outputs, instruction)
        return chunks, Encoded.from_rows(rows, outputs, embedder.info.hidden_size)
    titles = tok.ids([d.title for d in docs])
    room -= len(tok.ids([instruction])[0]) if instruction else 0
    budgets = [max(8, min(size, room - len(t) - CUT_SLACK)) for t in titles]
    chunks = chunk_documents(docs, tok, size, overlap, budgets)
    texts = [encoding_text(docs[c.doc], c.text) for c in chunks]
    enc = embedder.encode(texts, outputs=outputs, task=task)
    return chunks, enc


def late_chunk_rows(
    docs: Sequence[Document],
    chunks: Sequence[Chunk],
    embedder: Embedder,
    outputs: tuple[OutputKind, ...],
    instruction: str = "",
) -> list[EmbeddingRow]:
    """Late chunking: each document runs whole (the passage ``instruction``'s tokens, the
    title's, then its text's; past the
    model's length as overlapping windows stitched token by token, see
    :meth:`Embedder.token_outputs`), and each chunk's vectors pool that run's outputs over
    the chunk's own tokens (:func:`~bgekit.models.long_input.pool_span`), so every chunk
    embedding carries its document's context."""
    tok = embedder.tokenizer
    frame = tok.frame
    if frame is None:
        raise InputError(
            f"late chunking needs a tokenizer bgekit can window; {embedder.info.name}'s is not one"
        )
    lead = tok.ids([instruction])[0] if instruction else []
    titles = [lead + t for t in tok.ids([d.title for d in docs])]
    texts = tok.ids([d.text for d in docs])
    seqs = tok.wrap_ids([t + x for t, x in zip(titles, texts, strict=True)], UNLIMITED)
    by_doc: dict[int, list[int]] = {}
    for j, c in enumerate(chunks):
        by_doc.setdefault(c.doc, []).append(j)
    groups: list[list[int]] = [[]]
    tokens = 0
    for i, seq in enumerate(seqs):
        if groups[-1] and tokens + len(seq) > LATE_GROUP_TOKENS:
            groups.append([])
            tokens = 0
        groups[-1].append(i)
        tokens += len(seq)
    rows: list[EmbeddingRow] = []  # in chunk order: chunks and groups both follow the documents
    for group in groups:
        outs = embedder.token_outputs([seqs[g] for g in group], outputs) if group else []
        for g, out in zip(group, outs, strict=True):
            start = len(frame[0]) + len(titles[g])
            for j in by_doc.get(g, []):
                a, b = chunks[j].tokens
                rows.append(
                    pool_span(
                        seqs[g].ids,
                        out.hidden,
                        out.sparse,
                        out.multivector,
                        (start + a, start + b),
                        normalize=embedder.info.normalize,
                        special_ids=tok.special_ids,
                    )
                )
    if len(rows) != len(chunks):  # a bug, never silent
        raise InputError(f"late chunking pooled {len(rows)} chunks of {len(chunks)}")
    return rows


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
