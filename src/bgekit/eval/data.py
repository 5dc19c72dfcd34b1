"""Evaluation data: BEIR-layout retrieval sets and STS pair files, read with clear errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from bgekit.errors import InputError
from bgekit.io import iter_jsonl


@dataclass(frozen=True)
class RetrievalDataset:
    """A BEIR-layout dataset, one split.

    Documents are ``title + " " + text`` (stripped), as BEIR and MTEB join them; a
    document without a title is its text alone.
    """

    name: str
    split: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    fingerprint: str

    def __post_init__(self) -> None:
        if len(self.doc_ids) != len(self.docs) or len(self.query_ids) != len(self.queries):
            raise ValueError("ids and texts differ in length")


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
            raise InputError(f'{path}:{n}: expected an object with "_id" and a "text" string')
        rows.append((n, obj))
    return rows


def _fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def load_beir(folder: str | Path, split: str = "test") -> RetrievalDataset:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``folder``.

    Only queries that have judgements in the split are kept (as BEIR does). Judgements with
    relevance 0 are kept for pytrec_eval (they count as judged non-relevant).
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
    seen: set[str] = set()
    for n, obj in _jsonl(corpus_file):
        did = str(obj["_id"])
        if did in seen:
            raise InputError(f"{corpus_file}:{n}: duplicate _id {did!r}")
        seen.add(did)
        title = obj.get("title") or ""
        doc_ids.append(did)
        docs.append(f"{title} {obj['text']}".strip() if title else obj["text"].strip())

    all_queries = {}
    for _n, obj in _jsonl(queries_file):
        all_queries[str(obj["_id"])] = obj["text"]

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
    return RetrievalDataset(
        name=root.name,
        split=split,
        doc_ids=doc_ids,
        docs=docs,
        query_ids=query_ids,
        queries=[all_queries[q] for q in query_ids],
        qrels=qrels,
        fingerprint=_fingerprint(corpus_file, queries_file, qrels_file),
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
