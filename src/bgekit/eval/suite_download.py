"""Fetching a suite's data from the hub datasets the reference reads, into its local layout
(:mod:`bgekit.eval.suites`), once; later runs read the folder. Needs ``datasets`` and the
internet (offline, one error saying which files to place where).

Sources, as the reference's loaders take them: MIRACL — ``miracl/miracl-corpus`` (corpus)
and the topic / qrels TSV files of ``miracl/miracl``; MLDR — ``Shitao/MLDR`` (``corpus-<lang>``,
and ``<lang>`` with positive passages judged 1 and listed negatives 0); MS MARCO passage dev —
``Tevatron/msmarco-passage-corpus``, ``BeIR/msmarco`` queries and ``BeIR/msmarco-qrels``
(validation), queries kept when judged; BRIGHT — ``xlangai/bright`` (``documents``, and the
split's queries, ids ``<split>-<id>``, gold documents judged 1, excluded ones 0); MKQA —
``BeIR/nq``'s corpus (normalised as the reference does: dashes, quotes, primes and some
control characters mapped, lower-cased) and ``Shitao/bge-m3-data``'s ``MKQA_test-data.zip``
(``<lang>.jsonl``: id, question, answers); AIR-Bench (dev only: its test qrels are private) —
``AIR-Bench/<task type>_<domain>_<language>`` (version ``AIR-Bench_24.05``: the corpus and the
split's queries) and ``AIR-Bench/qrels-<task type>_<domain>_<language>-dev``.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bgekit.errors import InputError
from bgekit.eval.suites import Suite
from bgekit.io import atomic_write

# MKQA's corpus normalisation (the reference's, from ChemDataExtractor): characters removed,
# and characters mapped to ASCII.
_REMOVED = "\u0001\u0002\u0003\u0004\u0005\u0006\u0007\u0008\u000e\u000f\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u00ad"
_MAPPED = (
    dict.fromkeys("\u000b\u000c\u0085", " ")
    | dict.fromkeys("\u2010\u2011\u2043\u2012\u2013\u2014\u2015\u2212\uff0d\u207b", "-")
    | dict.fromkeys("\u201c\u201d\u201e\u201f", '"')
    | dict.fromkeys("\u2018\u2019\u201a\u201b\u055a\ua78b\ua78c\uff07\u0060\u00b4\u2032\u2035", "'")
    | {"\u2033": "''", "\u2036": "''", "\u2034": "'''", "\u2037": "'''", "\u2057": "''''", "\u2026": "..."}
    | dict.fromkeys("\u2044\u2215", "/")
)
_TABLE = str.maketrans({**dict.fromkeys(_REMOVED, None), **_MAPPED})


def normalize_mkqa(text: str) -> str:
    """The reference's MKQA corpus normalisation, before it lower-cases."""
    return text.translate(_TABLE).replace(" . . . ", " ... ")


def _write(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
            n += 1
    return n


def _load(*args: Any, **kwargs: Any) -> Any:
    try:
        from datasets import load_dataset
    except ImportError:
        raise InputError("downloading a suite needs datasets: pip install datasets") from None
    try:
        return load_dataset(*args, **kwargs)
    except (ConnectionError, OSError, ValueError) as e:
        raise InputError(
            f"cannot fetch {args[0]} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def _hub_file(repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, repo_type="dataset"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise InputError(f"cannot fetch {filename} from {repo} ({type(e).__name__})") from None


def _tsv(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        yield from csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


def download(s: Suite, folder: str | Path, subset: str, split: str) -> None:
    """Write ``folder/<subset>`` (and MKQA's shared corpus) unless already there."""
    root = Path(folder)
    base = root / subset
    corpus = (root if s.shared_corpus else base) / "corpus.jsonl"
    queries, qrels = base / f"{split}_queries.jsonl", base / f"{split}_qrels.jsonl"
    if corpus.is_file() and queries.is_file() and qrels.is_file():
        return
    fetch = {
        "miracl": _miracl,
        "mldr": _mldr,
        "msmarco": _msmarco,
        "bright": _bright,
        "mkqa": _mkqa,
        "airbench": _air_bench,
    }[s.name]
    fetch(subset, split, corpus, queries, qrels)


def _miracl(lang: str, split: str, corpus: Path, queries: Path, qrels: Path) -> None:
    if not corpus.is_file():
        rows = _load("miracl/miracl-corpus", lang, split="train")
        _write(corpus, ({"id": str(r["docid"]), "title": r["title"], "text": r["text"]} for r in rows))
    prefix = f"miracl-v1.0-{lang}"
    topics = _hub_file("miracl/miracl", f"{prefix}/topics/topics.{prefix}-{split}.tsv")
    judged = _hub_file("miracl/miracl", f"{prefix}/qrels/qrels.{prefix}-{split}.tsv")
    _write(queries, ({"id": q, "text": text} for q, text, *_ in _tsv(topics)))
    _write(qrels, ({"qid": q, "docid": d, "relevance": int(r)} for q, _, d, r in _tsv(judged)))


def mldr_rows(records: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """MLDR's query records as the layout's queries and qrels (listed negatives judged 0)."""
    qs, judged = [], []
    for r in records:
        qid = str(r["query_id"])
        qs.append({"id": qid, "text": r["query"]})
        judged += [{"qid": qid, "docid": str(p["docid"]), "relevance": 1} for p in r["positive_passages"]]
        judged += [
            {"qid": qid, "docid": str(p["docid"]), "relevance": 0} for p in r.get("negative_passages") or []
        ]
    return qs, judged


def _mldr(lang: str, split: str, corpus: Path, queries: Path, qrels: Path) -> None:
    if not corpus.is_file():
        rows = _load("Shitao/MLDR", f"corpus-{lang}", split="corpus")
        _write(corpus, ({"id": str(r["docid"]), "text": r["text"]} for r in rows))
    qs, judged = mldr_rows(_load("Shitao/MLDR", lang, split=split))
    _write(queries, qs)
    _write(qrels, judged)


def _msmarco(name: str, split: str, corpus: Path, queries: Path, qrels: Path) -> None:
    if name != "passage" or split != "dev":
        raise InputError(
            "bgekit downloads MS MARCO passage dev only; place the document corpus or the TREC DL "
            f"queries / qrels in the layout yourself ({corpus.parent})"
        )
    if not corpus.is_file():
        rows = _load("Tevatron/msmarco-passage-corpus", split="train")
        _write(
            corpus, ({"id": str(r["docid"]), "title": r.get("title") or "", "text": r["text"]} for r in rows)
        )
    judged = [
        {"qid": str(r["query-id"]), "docid": str(r["corpus-id"]), "relevance": int(r["score"])}
        for r in _load("BeIR/msmarco-qrels", split="validation")
    ]
    wanted = {j["qid"] for j in judged}
    rows = _load("BeIR/msmarco", "queries", split="queries")
    _write(queries, ({"id": str(r["_id"]), "text": r["text"]} for r in rows if str(r["_id"]) in wanted))
    _write(qrels, judged)


def bright_rows(
    split: str, records: Iterable[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """BRIGHT's query records as the layout's queries and qrels: ids ``<split>-<id>``, gold
    documents judged 1, excluded ones 0."""
    qs, judged = [], []
    for r in records:
        qid = f"{split}-{r['id']}"
        qs.append({"id": qid, "text": r["query"]})
        judged += [{"qid": qid, "docid": str(d), "relevance": 1} for d in r["gold_ids"]]
        judged += [
            {"qid": qid, "docid": str(d), "relevance": 0} for d in r.get("excluded_ids") or [] if d != "N/A"
        ]
    return qs, judged


def _bright(name: str, split: str, corpus: Path, queries: Path, qrels: Path) -> None:
    if not corpus.is_file():
        rows = _load("xlangai/bright", "documents", split=name)
        _write(corpus, ({"id": str(r["id"]), "text": r["content"]} for r in rows))
    qs, judged = bright_rows(split, _load("xlangai/bright", split, split=name))
    _write(queries, qs)
    _write(qrels, judged)


def mkqa_rows(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """MKQA's ``<lang>.jsonl`` (id, question, answers) as the layout's queries and qrels."""
    qs, judged = [], []
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line)
        qs.append({"id": str(r["id"]), "text": r["question"]})
        judged.append({"qid": str(r["id"]), "answers": list(r["answers"])})
    return qs, judged


def _mkqa(lang: str, split: str, corpus: Path, queries: Path, qrels: Path) -> None:
    if not corpus.is_file():
        rows = _load("BeIR/nq", "corpus", split="corpus")
        _write(
            corpus,
            (
                {
                    "id": str(r["_id"]),
                    "title": normalize_mkqa(r["title"]).lower(),
                    "text": normalize_mkqa(r["text"]).lower(),
                }
                for r in rows
            ),
        )
    archive = _hub_file("Shitao/bge-m3-data", "MKQA_test-data.zip")
    with zipfile.ZipFile(archive) as z:
        name = next((n for n in z.namelist() if n.endswith(f"/{lang}.jsonl") or n == f"{lang}.jsonl"), None)
        if name is None:
            raise InputError(f"{archive} holds no {lang}.jsonl")
        text = io.TextIOWrapper(z.open(name), encoding="utf-8")
        qs, judged = mkqa_rows(text)
    _write(queries, qs)
    _write(qrels, judged)


def _air_bench(subset: str, split: str, corpus: Path, queries: Path, qrels: Path) -> None:
    if split != "dev":
        raise InputError(
            "AIR-Bench's test qrels are private (its leaderboard scores them): download the dev split"
        )
    task_type, domain, lang, dataset = subset.split("/")
    repo, version, name = (
        f"AIR-Bench/{task_type}_{domain}_{lang}",
        "AIR-Bench_24.05",
        dataset.replace("-", "_"),
    )
    if not corpus.is_file():
        rows = _load(repo, version, split=f"corpus_{name}")
        _write(corpus, ({"id": str(r["id"]), "text": r["text"]} for r in rows))
    rows = _load(repo, version, split=f"queries_{name}_{split}")
    _write(queries, ({"id": str(r["id"]), "text": r["text"]} for r in rows))
    judged = _load(f"AIR-Bench/qrels-{task_type}_{domain}_{lang}-dev", split=f"qrels_{name}_dev")
    _write(
        qrels,
        ({"qid": str(r["qid"]), "docid": str(r["docid"]), "relevance": int(r["relevance"])} for r in judged),
    )
