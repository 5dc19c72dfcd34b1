"""Evaluation data: BEIR-layout retrieval sets (text, or with images) and STS pair files,
read with clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bgekit.errors import InputError
from bgekit.images import Composed, ImageInput, Item
from bgekit.io import iter_jsonl


@dataclass(frozen=True)
class RetrievalDataset:
    """A BEIR-layout dataset, one split.

    Documents are ``title + " " + text`` (stripped), as BEIR and MTEB join them; a
    document without a title is its text alone. An image document (or query) keeps its
    image file's absolute path in ``doc_images`` (``query_images``), ``None`` for a text
    one; its entry in ``docs`` (``queries``) is then its caption, ``""`` when it has none.
    :meth:`doc_items` and :meth:`query_items` are what an image model encodes.
    """

    name: str
    split: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    fingerprint: str
    doc_images: list[str | None] | None = None
    query_images: list[str | None] | None = None

    def __post_init__(self) -> None:
        if len(self.doc_ids) != len(self.docs) or len(self.query_ids) != len(self.queries):
            raise ValueError("ids and texts differ in length")
        if self.doc_images is not None and len(self.doc_images) != len(self.docs):
            raise ValueError("doc_images and docs differ in length")
        if self.query_images is not None and len(self.query_images) != len(self.queries):
            raise ValueError("query_images and queries differ in length")

    @property
    def has_images(self) -> bool:
        """Whether any document or query is an image."""
        return any(p is not None for p in (*(self.doc_images or ()), *(self.query_images or ())))

    @property
    def modalities(self) -> frozenset[str]:
        """The kinds of input the dataset holds, named as :attr:`bgekit.types.ModelInfo.modalities`
        names them: ``"text"``, ``"image"`` and ``"text+image"`` (an image with a caption)."""
        pairs = [
            *zip(self.docs, self.doc_images or [None] * len(self.docs), strict=True),
            *zip(self.queries, self.query_images or [None] * len(self.queries), strict=True),
        ]
        return frozenset(
            "text" if image is None else ("text+image" if text else "image") for text, image in pairs
        )

    def doc_items(self) -> list[Item]:
        """The documents as an embedder takes them: texts, images, image + caption. Images
        stay files (read per batch when encoded, never all at once)."""
        return _items(self.docs, self.doc_images, self.doc_ids, "document")

    def query_items(self) -> list[Item]:
        """The queries as an embedder takes them (see :meth:`doc_items`)."""
        return _items(self.queries, self.query_images, self.query_ids, "query")


def _items(texts: list[str], images: list[str | None] | None, ids: list[str], what: str) -> list[Item]:
    if images is None:
        return list(texts)
    out: list[Item] = []
    for text, image, key in zip(texts, images, ids, strict=True):
        if image is None:
            out.append(text)
            continue
        picture = ImageInput(path=image, name=f"{image} ({what} {key!r})")
        out.append(Composed(text, picture) if text else picture)
    return out


@dataclass(frozen=True)
class _Record:
    line: int
    key: str
    title: str
    text: str  # "" for an image without one
    image: str | None  # as written in the file


_SHAPE = 'expected an object with "_id" and a "text" string (or an "image" path)'


def _records(path: Path) -> list[_Record]:
    rows = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "_id" not in obj:
            raise InputError(f"{path}:{n}: {_SHAPE}")
        image, text = obj.get("image"), obj.get("text")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise InputError(f'{path}:{n}: "image" must be a file path (a non-empty string)')
        if not isinstance(text, str) and (image is None or text is not None):
            raise InputError(f"{path}:{n}: {_SHAPE}")
        title = obj.get("title") or ""
        rows.append(_Record(n, str(obj["_id"]), str(title), text or "", image))
    return rows


def _image_file(folder: Path, record: _Record, where: str) -> tuple[str, os.stat_result]:
    """The record's image as an absolute path (a relative one is taken from ``folder``,
    where its JSONL file is) with its size and time, checked to be a file."""
    assert record.image is not None
    given = Path(record.image)
    path = given if given.is_absolute() else folder / given
    hint = f' ("image" paths are relative to {folder})' if not given.is_absolute() else ""
    try:
        path = path.resolve()
        info = path.stat()
    except (OSError, RuntimeError, ValueError) as err:  # missing, unreadable, a link loop, a NUL
        problem = (
            "no such file" if isinstance(err, FileNotFoundError) else getattr(err, "strerror", None) or err
        )
        raise InputError(
            f"{where}: image {record.image!r} of {record.key!r}: {problem}: {path}{hint}"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{where}: image {record.image!r} of {record.key!r} is not a file: {path}{hint}")
    return str(path), info


def _fingerprint(files: list[Path], images: list[tuple[str, os.stat_result]]) -> str:
    """The data files' bytes, and each image file's identity: path, size and modification
    time (hashing every image would read the whole corpus; a rewritten file changes its
    time). A dataset without images keeps the fingerprint it always had."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.read_bytes())
    for path, info in images:
        h.update(json.dumps([path, info.st_size, info.st_mtime_ns]).encode())
    return h.hexdigest()[:16]


def load_beir(folder: str | Path, split: str = "test") -> RetrievalDataset:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``folder``.

    Only queries that have judgements in the split are kept (as BEIR does). Judgements with
    relevance 0 are kept for pytrec_eval (they count as judged non-relevant).

    Images (for image models: BGE-Visualized, BGE-VL). A corpus record may name an image
    file instead of, or as well as, a text: ``{"_id": "d1", "image": "img/d1.jpg"}``, or
    with a caption, ``{"_id": "d2", "image": "img/d2.png", "title": "...", "text": "..."}``
    (``title + " " + text`` is encoded with the image). A query record likewise:
    ``{"_id": "q1", "image": "q/q1.jpg"}`` (search by the image) or with a ``"text"`` (an
    image + text query, e.g. "the same, at night"). A relative path is taken from the
    folder of the JSONL file that names it; an absolute one as it is. Every image of the
    corpus and of the split's queries must be a file when the dataset is read (the error
    names the record); images are decoded only when encoded, a batch at a time. Such a
    dataset is evaluated in dense mode with an image model, by the same metrics; the
    encoding cache tells image files apart by path, size and modification time.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"no dataset folder at {root}")
    corpus_file, queries_file = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        found = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise InputError(f"missing file {qrels_file} (splits found: {', '.join(found) or 'none'})")

    doc_ids: list[str] = []
    docs: list[str] = []
    doc_images: list[str | None] = []
    images: list[tuple[str, os.stat_result]] = []
    seen: set[str] = set()
    for r in _records(corpus_file):
        if r.key in seen:
            raise InputError(f"{corpus_file}:{r.line}: duplicate _id {r.key!r}")
        seen.add(r.key)
        doc_ids.append(r.key)
        docs.append(f"{r.title} {r.text}".strip() if r.title else r.text.strip())
        if r.image is not None:
            images.append(_image_file(corpus_file.parent, r, f"{corpus_file}:{r.line}"))
        doc_images.append(images[-1][0] if r.image is not None else None)

    all_queries = {r.key: r for r in _records(queries_file)}

    qrels: dict[str, dict[str, int]] = {}
    with qrels_file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[:2] == ["query-id", "corpus-id"]:
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                raise InputError(f"{qrels_file}:{n}: expected query-id, corpus-id, score separated by tabs")
            qid, did, score = parts
            try:
                rel = int(float(score))
            except ValueError:
                raise InputError(f"{qrels_file}:{n}: score {score!r} is not a number") from None
            if qid not in all_queries:
                raise InputError(f"{qrels_file}:{n}: query id {qid!r} is not in {queries_file.name}")
            if did not in seen:
                raise InputError(f"{qrels_file}:{n}: corpus id {did!r} is not in {corpus_file.name}")
            qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise InputError(f"{qrels_file} has no judgements")
    query_ids = [q for q in all_queries if q in qrels]
    query_images: list[str | None] = []
    for q in query_ids:  # only the split's queries: the others' images are not read
        r = all_queries[q]
        if r.image is not None:
            images.append(_image_file(queries_file.parent, r, f"{queries_file}:{r.line}"))
        query_images.append(images[-1][0] if r.image is not None else None)
    # An image query's text is its edit or caption; whitespace alone is none.
    queries = [
        all_queries[q].text.strip() if all_queries[q].image else all_queries[q].text for q in query_ids
    ]
    return RetrievalDataset(
        name=root.name,
        split=split,
        doc_ids=doc_ids,
        docs=docs,
        query_ids=query_ids,
        queries=queries,
        qrels=qrels,
        fingerprint=_fingerprint([corpus_file, queries_file, qrels_file], images),
        doc_images=doc_images if images else None,
        query_images=query_images if images else None,
    )


@dataclass(frozen=True)
class StsDataset:
    name: str
    first: list[str]
    second: list[str]
    gold: list[float]


def load_sts(path: str | Path) -> StsDataset:
    """An STS Benchmark file: tab-separated, gold score in column 5, sentences in 6 and 7.

    Also accepts a three-column TSV (``sentence1, sentence2, score``) or JSONL with
    ``sentence1``, ``sentence2`` and ``score``.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"missing file {file}")
    first: list[str] = []
    second: list[str] = []
    gold: list[float] = []
    with file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                if file.suffix == ".jsonl":
                    obj = json.loads(line)
                    a, b, s = obj["sentence1"], obj["sentence2"], obj["score"]
                else:
                    parts = line.rstrip("\n").split("\t")
                    a, b, s = (
                        (parts[5], parts[6], parts[4]) if len(parts) >= 7 else (parts[0], parts[1], parts[2])
                    )
                score = float(s)
            except (json.JSONDecodeError, KeyError, IndexError, ValueError, TypeError):
                raise InputError(f"{file}:{n}: expected two sentences and a numeric score") from None
            first.append(a)
            second.append(b)
            gold.append(score)
    if not gold:
        raise InputError(f"{file} has no pairs")
    return StsDataset(name=file.stem, first=first, second=second, gold=gold)
