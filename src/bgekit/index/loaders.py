"""Reading documents from what users have: folders of text, Markdown, HTML, PDF and image
files (with include / exclude patterns), or one table of documents — JSONL, CSV or Parquet
with a text column.

A folder's file that cannot be read (not valid in the encoding, a damaged PDF) is skipped
and counted in a warning, unless ``strict`` asks to stop there; files that are not text
(NUL bytes) are skipped and counted too. A source's own single file is read or refused.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from bgekit.errors import InputError
from bgekit.images import is_image_path
from bgekit.index.documents import Document, check_documents, document_problem, not_unicode, shown_id
from bgekit.io import iter_jsonl, read_text

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
HTML_SUFFIXES = (".html", ".htm")
PDF_SUFFIXES = (".pdf",)
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# A folder's files that became skipped are named in the warning, up to this many.
SHOWN_FILES = 5

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """How :func:`read_source` reads. ``include`` / ``exclude``: patterns (``fnmatch``, ``*``
    crosses folders) on a folder file's path inside the folder — a file is read when it
    matches an include pattern (or none are given) and no exclude pattern. ``strict``: a
    folder file that cannot be read stops the read instead of being skipped.
    ``text_field`` / ``id_field`` / ``title_field``: a table's columns (``id_field=None``:
    ``id``, else ``_id``); a CSV or Parquet table's other columns become metadata."""

    encoding: str = "utf-8"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    strict: bool = False
    text_field: str = "text"
    id_field: str | None = None
    title_field: str = "title"

    def wanted(self, relative: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(relative, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(relative, p) for p in self.exclude)


def read_source(
    source: str | Path, options: SourceOptions | None = None, *, encoding: str | None = None
) -> list[Document]:
    """Documents from a folder, one file, or a table (see the module docstring).

    A folder: text files (``.txt``, ``.md``, ``.markdown``, ``.rst``), HTML (its main text:
    ``<main>`` / ``<article>`` when there is one, without scripts, styles and navigation;
    headings kept as Markdown ``#`` lines), PDF (the text layer, pages in order) and images;
    id = the path inside the folder, title = the HTML ``<title>`` or the file name without
    suffix; metadata ``path``, ``mtime`` (ISO 8601, UTC), ``ext`` (and ``pages`` for a PDF).
    A table: JSONL (``id``/``_id``, ``text``, optional ``title``, ``metadata``, ``image``: a
    path relative to the file, whose ``text`` is then an optional caption; a BEIR
    ``corpus.jsonl`` is one), CSV or Parquet (a row per document).

    A source with no documents at all is an error: there is nothing to index."""
    opts = options or SourceOptions()
    if encoding is not None:
        opts = replace(opts, encoding=encoding)
    path = Path(source)
    if path.is_dir():
        docs = _from_folder(path, opts)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            docs = _from_table(path, opts)
        else:
            reader = _reader(path)
            if reader is None:
                kinds = "text, Markdown, HTML, PDF or image files, or a .jsonl, .csv or .parquet table"
                raise InputError(f"{path}: give a folder of {kinds}")
            if reader is _text_file and is_binary(path):
                raise InputError(f"{path} is not a text file")
            docs = [reader(path, path.name, opts)]
    else:
        raise InputError(f"no such file or folder: {path}")
    if not docs:
        raise InputError(
            f"nothing to index: {path} holds no text, Markdown, HTML, PDF, image or table documents"
            + (" that the include / exclude patterns let through" if opts.include or opts.exclude else "")
        )
    return check_documents(docs)


# -- folders ----------------------------------------------------------------------------


def _reader(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _text_file
    if suffix in HTML_SUFFIXES:
        return _html_file
    if suffix in PDF_SUFFIXES:
        return _pdf_file
    if is_image_path(path):
        return _image_file
    return None


def _from_folder(folder: Path, opts: SourceOptions) -> list[Document]:
    files = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or _reader(p) is None:
            continue
        relative = p.relative_to(folder).as_posix()
        if not_unicode(relative) is not None:  # undecodable bytes come back as lone surrogates
            raise InputError(
                f"{folder}: the file name {os.fsencode(p.relative_to(folder))!r} is not valid UTF-8; "
                "rename it (convmv can) or move it out of the folder"
            )
        if opts.wanted(relative):
            files.append((p, relative))
    binary = [rel for p, rel in files if _reader(p) is _text_file and is_binary(p)]
    if binary:
        logger.warning("skipped %d files that are not text: %s", len(binary), _names(binary))
    docs, failed = [], []
    for p, relative in files:
        if relative in binary:
            continue
        try:
            docs.append(_reader(p)(p, relative, opts))
        except InputError as e:
            if opts.strict:
                raise
            failed.append((relative, str(e)))
    if failed:
        first = failed[0][1]
        logger.warning(
            "skipped %d files that could not be read (--strict stops instead): %s; the first: %s",
            len(failed),
            _names([rel for rel, _ in failed]),
            first,
        )
    return docs


def _names(relatives: list[str]) -> str:
    return ", ".join(relatives[:SHOWN_FILES]) + (", ..." if len(relatives) > SHOWN_FILES else "")


def is_binary(path: Path) -> bool:
    """A NUL byte in the first 8 KiB: not text (an executable, an archive, an image)."""
    with path.open("rb") as f:
        return b"\x00" in f.read(8192)


def file_metadata(path: Path) -> dict[str, Any]:
    """What a file from a folder source records (filterable): its path, modification time
    (ISO 8601, UTC) and extension."""
    mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    return {"path": str(path), "mtime": mtime.isoformat(timespec="seconds"), "ext": path.suffix.lower()}


def _text_file(path: Path, doc_id: str, opts: SourceOptions) -> Document:
    return Document(doc_id, read_text(path, opts.encoding), path.stem, file_metadata(path))


def _image_file(path: Path, doc_id: str, opts: SourceOptions) -> Document:
    return Document(doc_id, "", "", file_metadata(path), str(path.resolve()))


def _html_file(path: Path, doc_id: str, opts: SourceOptions) -> Document:
    page = html_text(read_text(path, opts.encoding))
    return Document(doc_id, page.text, page.title or path.stem, file_metadata(path))


def _pdf_file(path: Path, doc_id: str, opts: SourceOptions) -> Document:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        raise InputError(f"{path}: reading PDF needs pypdf: pip install 'bgekit[pdf]'") from None
    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a readable PDF ({type(e).__name__}: {e})") from None
    meta = file_metadata(path) | {"pages": len(pages)}
    title = ""
    info = reader.metadata
    if info is not None and isinstance(info.title, str):
        title = info.title.strip()
    return Document(doc_id, "\n\n".join(p for p in pages if p), title or path.stem, meta)


# -- HTML -------------------------------------------------------------------------------

# Elements whose text is not the page's content.
_SKIPPED = frozenset(
    {"script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form"}
)
_VOID = frozenset(
    {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"}
)
_BLOCKS = frozenset(
    {"p", "div", "section", "article", "main", "li", "ul", "ol", "tr", "table", "pre", "blockquote"}
    | {"h1", "h2", "h3", "h4", "h5", "h6", "dd", "dt", "figcaption", "br", "hr"}
)


@dataclass(frozen=True)
class HtmlText:
    title: str
    text: str


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skipping = 0  # depth inside skipped elements
        self.main = 0  # depth inside <main> / <article>
        self.in_title = False
        self.title: list[str] = []
        self.body: list[str] = []  # everything outside skipped elements
        self.main_text: list[str] = []  # what sits in <main> / <article>
        self.pre = 0

    def _emit(self, text: str) -> None:
        self.body.append(text)
        if self.main:
            self.main_text.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _SKIPPED and tag not in _VOID:
            self.skipping += 1
        if self.skipping:
            return
        if tag in ("main", "article"):
            self.main += 1
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCKS:
            self._emit("\n\n")
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._emit("#" * int(tag[1]) + " ")  # headings as Markdown: chunks follow them
        elif tag == "li":
            self._emit("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _SKIPPED and tag not in _VOID:
            self.skipping = max(0, self.skipping - 1)
            return
        if self.skipping:
            return
        if tag in _BLOCKS:
            self._emit("\n\n")
        if tag in ("main", "article"):
            self.main = max(0, self.main - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
            return
        if self.skipping:
            return
        self._emit(data if self.pre else re.sub(r"\s+", " ", data))


def html_text(markup: str) -> HtmlText:
    """A page's title and main text: ``<main>`` / ``<article>`` when the page has them,
    else the body; no scripts, styles, navigation, headers, footers or forms; paragraphs
    separated by blank lines, headings as Markdown ``#`` lines, whitespace inside a
    paragraph collapsed (kept inside ``<pre>``)."""
    parser = _Extractor()
    parser.feed(markup)
    parser.close()
    raw = "".join(parser.main_text) if "".join(parser.main_text).strip() else "".join(parser.body)
    paragraphs = []
    for block in raw.split("\n\n"):
        lines = [ln.rstrip() for ln in block.split("\n")]
        kept = "\n".join(ln for ln in lines if ln.strip())
        if kept.strip():
            paragraphs.append(kept if "\n" in kept else " ".join(kept.split()))
    return HtmlText(" ".join("".join(parser.title).split()), "\n\n".join(paragraphs))


# -- tables -----------------------------------------------------------------------------


def _from_table(path: Path, opts: SourceOptions) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _from_jsonl(path, opts)
    rows = _csv_rows(path, opts) if suffix == ".csv" else _parquet_rows(path)
    docs: list[Document] = []
    first_row: dict[str, int] = {}
    for n, row in rows:
        doc = _row_document(row, path, n, opts, flat_metadata=True)
        _check_new(doc, path, n, first_row, "row")
        docs.append(doc)
    return docs


def _csv_rows(path: Path, opts: SourceOptions) -> Iterator[tuple[int, dict[str, Any]]]:
    text = read_text(path, opts.encoding)
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None:
        return
    for n, row in enumerate(reader, start=2):  # line 1 holds the column names
        if None in row:
            raise InputError(f"{path}:{n}: more values than the header has columns")
        yield n, dict(row)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _json_value(value: Any) -> Any:
    """A table cell as JSON data (dates and times as ISO text)."""
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _row_document(
    row: Mapping[str, Any], path: Path, n: int, opts: SourceOptions, *, flat_metadata: bool
) -> Document:
    where = f"{path}:{n}"
    id_fields = (opts.id_field,) if opts.id_field else ("id", "_id")
    key = next((row[f] for f in id_fields if row.get(f) not in (None, "")), None)
    image = row.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise InputError(f'{where}: "image" must be a file path')
    text = row.get(opts.text_field, "" if image else None)
    if key is None or not isinstance(text, str):
        ids = " or ".join(repr(f) for f in id_fields)
        raise InputError(
            f'{where}: expected {ids} and a {opts.text_field!r} string (or an "image"); '
            "--text-field / --id-field name other columns"
        )
    title = row.get(opts.title_field) or ""
    if flat_metadata:
        used = {*id_fields, opts.text_field, opts.title_field, "image"}
        meta = {str(k): _json_value(v) for k, v in row.items() if k not in used and v is not None}
    else:
        meta = row.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InputError(f'{where}: "metadata" must be an object')
    image = str((path.parent / image).resolve()) if image else None  # relative to the file
    doc = Document(str(key), text, title if isinstance(title, str) else str(title), meta, image)
    problem = document_problem(doc)
    if problem:
        raise InputError(f"{where}: {problem}")
    return doc


def _check_new(doc: Document, path: Path, n: int, first: dict[str, int], unit: str) -> None:
    if doc.id in first:
        raise InputError(
            f"{path}:{n}: document id {shown_id(doc.id)} was already given on {unit} {first[doc.id]}"
        )
    first[doc.id] = n


def _from_jsonl(path: Path, opts: SourceOptions) -> list[Document]:
    """Documents of a JSONL file, each checked as it is read: an error names the line."""
    docs = []
    first_line: dict[str, int] = {}
    for n, obj in iter_jsonl(path, opts.encoding):
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object")
        doc = _row_document(obj, path, n, opts, flat_metadata=False)
        _check_new(doc, path, n, first_line, "line")
        docs.append(doc)
    return docs
