"""Documents to chunks: splitting long texts by tokens, and encoding chunks (each on its
own, late chunking, or an image document with its caption)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from bgekit.errors import InputError
from bgekit.images import Composed, ImageInput, Item
from bgekit.index.documents import Document, check_documents, shown_id
from bgekit.index.text_split import TokenCounter, heading_path, headings, split_text
from bgekit.inputs import passage_text
from bgekit.models.long_input import pool_span, window_bounds
from bgekit.models.tokenizer import TextTokenizer
from bgekit.types import EmbeddingRow, Encoded, Hit, OutputKind

if TYPE_CHECKING:
    from bgekit.models import Embedder

logger = logging.getLogger(__name__)
UNLIMITED = 1 << 62  # a token limit that never cuts


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


Split = Literal["text", "tokens"]
SPLITS: tuple[Split, ...] = ("text", "tokens")
# A chunk's heading path takes at most this share of its budget (deeper ancestors dropped).
CONTEXT_SHARE = 4


def chunk_documents(
    docs: Sequence[Document],
    tokenizer: TextTokenizer,
    chunk_tokens: int,
    overlap: int,
    budgets: Sequence[int] | None = None,
    split: Split = "tokens",
    context: bool = False,
) -> list[Chunk]:
    """Split each document's text into chunks of at most ``chunk_tokens`` tokens (or its
    own entry of ``budgets``); a short text is one chunk. ``split="tokens"``: windows, each
    starting ``chunk_tokens - overlap`` tokens after the previous one
    (:func:`~bgekit.models.long_input.window_bounds`); ``"text"``: cut at headings,
    paragraphs, lines, sentences, then words (:func:`~bgekit.index.text_split.split_text`),
    overlapping by whole pieces. ``context`` (with ``"text"``): a chunk that does not start
    at its section's heading begins with its heading path (``Setup > Linux``), its room
    taken from the budget."""
    if chunk_tokens < 8:
        raise InputError(f"chunk_tokens must be at least 8, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise InputError(f"chunk_overlap must be in 0..{chunk_tokens - 1}, got {overlap}")
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    out = []
    for i, (doc, spans) in enumerate(zip(docs, token_spans(tokenizer, [d.text for d in docs]), strict=True)):
        size = chunk_tokens if budgets is None else budgets[i]
        if len(spans) <= size:
            out.append(Chunk(i, 0, doc.text.strip(), (0, len(spans))))
            continue
        if split == "text":
            out += _text_chunks(i, doc.text, spans, size, overlap, tokenizer if context else None)
            continue
        bounds = window_bounds(len(spans), size, overlap if overlap < size else size // 2)
        for no, (a, b) in enumerate(bounds):
            out.append(Chunk(i, no, doc.text[spans[a][0] : spans[b - 1][1]], (a, b)))
    return out


def _text_chunks(
    doc: int, text: str, spans: np.ndarray, size: int, overlap: int, tokenizer: TextTokenizer | None
) -> list[Chunk]:
    """One document's chunks cut where its text allows; with a ``tokenizer``, heading paths
    as context (see :func:`chunk_documents`)."""
    sections = headings(text) if tokenizer is not None else []
    reserve = 0
    if tokenizer is not None and sections:
        every = {" > ".join(heading_path(sections, h.start, inclusive=True)) for h in sections}
        reserve = min(max(len(ids) for ids in tokenizer.ids(sorted(every))), size // CONTEXT_SHARE)
    ranges = split_text(text, spans, max(8, size - reserve), overlap if overlap < size else size // 2)
    count = TokenCounter(spans)
    out = []
    for no, (a, b) in enumerate(ranges):
        body = text[a:b].strip()
        if tokenizer is not None and sections:
            # a chunk that starts at a heading carries that heading itself: its parents suffice
            starts_section = any(h.start == a for h in sections)
            path = heading_path(sections, a, inclusive=starts_section)[: -1 if starts_section else None]
            line = _fit_path(path, reserve, tokenizer)
            if line:
                body = f"{line}\n\n{body}"
        out.append(Chunk(doc, no, body, (count.token_index(a), count.token_index(b))))
    return out


def _fit_path(path: list[str], room: int, tokenizer: TextTokenizer) -> str:
    """The heading path as one line within ``room`` tokens: outer headings dropped first."""
    while path:
        line = " > ".join(path)
        if len(tokenizer.ids([line])[0]) <= room:
            return line
        path = path[1:]
    return ""


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
    split: Split = "tokens",
) -> tuple[list[Chunk], Encoded]:
    """Chunk ``docs`` (``chunk_tokens=None``: the model's passage length less its special
    tokens, with the overlap capped at half of it for short-context models) and encode the
    chunks. ``"independent"``: each chunk on its own as a document, title first (a chunk's
    budget leaves room for its title and the passage instruction of ``task`` (or the model's),
    so all of them fit the model together); ``"late"``: see :func:`late_chunk_rows`."""
    if any(d.image for d in docs):
        return _with_images(docs, embedder, outputs, chunk_tokens, chunk_overlap, chunking, task, split)
    if chunking == "late":
        tok = embedder.tokenizer
        size, overlap = _chunk_size(embedder, chunk_tokens, chunk_overlap)
        chunks = chunk_documents(docs, tok, size, overlap, split=split)
        instruction = embedder.prompts.instruction("document", task)
        rows = late_chunk_rows(docs, chunks, embedder, outputs, instruction)
        return chunks, Encoded.from_rows(rows, outputs, embedder.info.hidden_size)
    chunks = independent_chunks(docs, embedder, chunk_tokens, chunk_overlap, task, split)
    texts = [encoding_text(docs[c.doc], c.text) for c in chunks]
    enc = embedder.encode(texts, outputs=outputs, task=task)
    return chunks, enc


def _chunk_size(embedder: Embedder, chunk_tokens: int | None, chunk_overlap: int) -> tuple[int, int]:
    """(chunk size, overlap): ``chunk_tokens`` or the model's passage length less its special
    tokens, the default overlap capped at half a chunk."""
    room = max(8, embedder.info.passage_max_length - embedder.tokenizer.n_special)
    size = chunk_tokens or room
    return size, chunk_overlap if chunk_tokens else min(chunk_overlap, size // 2)


def independent_chunks(
    docs: Sequence[Document],
    embedder: Embedder,
    chunk_tokens: int | None,
    chunk_overlap: int,
    task: str | None = None,
    split: Split = "tokens",
) -> list[Chunk]:
    """Text documents' chunks for encoding each on its own, title first: a chunk's budget
    leaves room for its title and the passage instruction (and, split by text, its heading
    path)."""
    tok = embedder.tokenizer
    size, overlap = _chunk_size(embedder, chunk_tokens, chunk_overlap)
    room = max(8, embedder.info.passage_max_length - tok.n_special)
    instruction = embedder.prompts.instruction("document", task)
    titles = tok.ids([d.title for d in docs])
    room -= len(tok.ids([instruction])[0]) if instruction else 0
    budgets = [max(8, min(size, room - len(t) - CUT_SLACK)) for t in titles]
    return chunk_documents(docs, tok, size, overlap, budgets, split=split, context=True)


def _with_images(
    docs: Sequence[Document],
    embedder: Embedder,
    outputs: tuple[OutputKind, ...],
    chunk_tokens: int | None,
    chunk_overlap: int,
    chunking: Chunking,
    task: str | None,
    split: Split,
) -> tuple[list[Chunk], Encoded]:
    """:func:`encode_chunks` of documents some of which are images: an image document is
    one chunk (its caption, if any, encoded with the image, title first), the text documents
    are chunked as usual; all of them encoded in one run."""
    if "image" not in embedder.info.modalities:
        first = next(d for d in docs if d.image)
        raise InputError(
            f"document {shown_id(first.id)} is an image, but {embedder.info.name} reads text only; "
            "index images with an image model (BGE-Visualized, BGE-VL)"
        )
    if chunking == "late":
        raise InputError("late chunking takes text documents only; this source holds images")
    text_at = [i for i, d in enumerate(docs) if not d.image]
    chunks: list[Chunk] = []
    items: list[Item] = []
    if text_at:
        sub = independent_chunks(
            [docs[i] for i in text_at], embedder, chunk_tokens, chunk_overlap, task, split
        )
        chunks = [Chunk(text_at[c.doc], c.no, c.text, c.tokens) for c in sub]
    chunks += [Chunk(i, 0, d.text.strip()) for i, d in enumerate(docs) if d.image]
    chunks.sort(key=lambda c: (c.doc, c.no))
    for c in chunks:
        doc = docs[c.doc]
        if doc.image is None:
            items.append(encoding_text(doc, c.text))
            continue
        image = ImageInput(path=doc.image, name=f"{doc.image} (document {shown_id(doc.id)})")
        caption = encoding_text(doc, c.text)
        items.append(Composed(caption, image) if caption else image)
    return chunks, embedder.encode(items, outputs=outputs, task=task)


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
