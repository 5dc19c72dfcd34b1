"""Documents: what an index holds, checked (ids, Unicode, metadata, sizes);
:mod:`~bgekit.index.loaders` reads them from files and folders, :mod:`~bgekit.index.chunking`
cuts them into chunks."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bgekit.errors import InputError

# Metadata nested deeper than this is refused (JSON readers and writers recurse).
MAX_METADATA_DEPTH = 32
# An id longer than this is cut in messages.
SHOWN_ID_CHARS = 60


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """One document: a unique id, its text, an optional title and metadata (JSON values).
    An image document names its image file in ``image`` (kept by reference, not copied);
    its text, if any, is a caption encoded with the image (image models only)."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    image: str | None = None


@dataclass(frozen=True)
class AddReport:
    """What one add did: documents added (``replaced`` of them in place of indexed ones),
    their chunks, and documents skipped because they hold no text (empty or whitespace only)."""

    documents: int
    chunks: int
    skipped: int
    oversized: int = 0  # skipped for being over the index's max_document_chars
    replaced: int = 0  # of ``documents``, those that replaced an indexed one (update=True)


@dataclass(frozen=True)
class SyncReport:
    """What one sync did: documents new to the index, changed (re-encoded), unchanged (not
    encoded; their metadata refreshed), and removed (gone from the source, or now empty or
    over the size limit); chunks encoded; documents of the source skipped (no text, or
    over the size limit)."""

    added: int
    updated: int
    unchanged: int
    removed: int
    chunks: int
    skipped: int = 0
    oversized: int = 0


def content_hash(doc: Document) -> str:
    """What decides whether a document must be encoded again: its text, title and image
    path (not its metadata), hashed."""
    body = json.dumps([doc.text, doc.title, doc.image], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


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
    """The documents that hold text or an image, and how many did not (logged: they are
    skipped)."""
    kept = [d for d in docs if d.text.strip() or d.image]
    skipped = len(docs) - len(kept)
    if skipped:
        logger.warning("skipped %d of %d documents with no text", skipped, len(docs))
    return kept, skipped


def shown_id(doc_id: str) -> str:
    """An id for a message: quoted, and cut when long."""
    if len(doc_id) <= SHOWN_ID_CHARS:
        return repr(doc_id)
    return f"{doc_id[:SHOWN_ID_CHARS]!r}... ({len(doc_id):,} characters)"


def not_unicode(text: str) -> int | None:
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
        at = not_unicode(value)
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
        at = not_unicode(value)
        if at is not None:
            return f"the {name} holds a lone surrogate at character {at} (not valid Unicode)"
    if not isinstance(doc.metadata, dict):
        return f"the metadata is a {type(doc.metadata).__name__}, not an object"
    if doc.image is not None and (not isinstance(doc.image, str) or not doc.image):
        return "the image must be a file path (a non-empty string)"
    if doc.image is not None and not_unicode(doc.image) is not None:
        return "the image path is not valid Unicode"
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
