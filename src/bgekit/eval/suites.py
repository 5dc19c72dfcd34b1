"""The reference toolkit's benchmark suites by name — MIRACL, MKQA, MLDR, MS MARCO, BRIGHT and
AIR-Bench —
read from its local data layout, scored by its rules, written in its result layout.

Layout (FlagEmbedding's evaluation package, which also writes it when it downloads a suite):
``DATA/<subset>/corpus.jsonl`` (``{"id", "title", "text"}``, title optional),
``DATA/<subset>/<split>_queries.jsonl`` (``{"id", "text"}``) and
``DATA/<subset>/<split>_qrels.jsonl`` (``{"qid", "docid", "relevance"}``); a subset is a
language (MIRACL, MKQA, MLDR) or a dataset (MS MARCO ``passage`` / ``document``, BRIGHT's
twelve, AIR-Bench's ``<task type>/<domain>/<language>/<dataset>``, e.g. ``qa/wiki/en/default``,
scored with its metrics at 1, 3, 5, 10, 50, 100 and 1000). MKQA shares one corpus, ``DATA/corpus.jsonl`` (BEIR's NQ), and its qrels name
answers instead of documents: ``{"qid", "answers": [...]}``.

Metrics: nDCG, MAP, Recall and P at each k by pytrec_eval, averaged over the queries it
scores; MRR@k and capped Recall@k by the reference's own rule, summed over the queries and
divided by the number of judged queries; all rounded to 5 places, keyed ``ndcg_at_10`` etc.
MKQA: ``qa_recall_at_k``, the share of questions with a passage holding an answer in the top
k — a passage holds an answer when the answer's tokens appear in it as a contiguous run,
both NFD-normalised and lower-cased, tokens being runs of letters / numbers / marks or single
other non-space characters. BRIGHT: documents judged 0 for a query (its excluded ids) are
removed from that query's results before scoring.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bgekit.errors import InputError
from bgekit.eval.data import RetrievalDataset
from bgekit.io import iter_jsonl

Judged = Literal["qrels", "answers"]


@dataclass(frozen=True)
class Suite:
    """A benchmark: its subsets (languages or datasets), splits, how queries are judged, the
    metrics its tables report, and where the reference downloads it from."""

    name: str
    subsets: tuple[str, ...]
    splits: tuple[str, ...]
    default_split: str
    judged: Judged
    headline: str  # the report's metric
    k_values: tuple[int, ...]
    source: str  # where the reference gets it (for the message when files are missing)
    shared_corpus: bool = False
    exclude_zero: bool = False  # BRIGHT: documents judged 0 leave the query's results
    # "flag": <subset>-<split>.json; "air-bench": <task type>/<domain>/<lang>_<dataset>_<split>.json
    result_layout: str = "flag"


def _air_bench_subsets() -> tuple[str, ...]:
    """AIR-Bench 24.05's datasets as ``<task type>/<domain>/<language>/<dataset>``."""
    every = ["en", "zh", "ar", "bn", "de", "es", "fa", "fr", "hi", "id", "ja", "ko", "ru"]
    qa = {
        "wiki": every,
        "web": every,
        "news": every,
        "healthcare": ["en", "zh", "de", "es", "fr"],
        "law": ["en", "de", "fr"],
        "arxiv": ["en"],
        "finance": ["en", "zh", "ar", "fr"],
        "science": ["ru"],
        "msmarco": ["en"],
    }
    long_doc = {
        "arxiv": ["gpt3", "llama2", "gemini", "llm-survey"],
        "book": ["origin-of-species_darwin", "a-brief-history-of-time_stephen-hawking"],
        "healthcare": [
            "pubmed_100K-200K_1",
            "pubmed_100K-200K_2",
            "pubmed_100K-200K_3",
            "pubmed_40K-50K_5-merged",
            "pubmed_30K-40K_10-merged",
        ],
        "law": ["lex_files_300K-400K", "lex_files_400K-500K", "lex_files_500K-600K", "lex_files_600K-700K"],
    }
    out = [f"qa/{d}/{lang}/default" for d, langs in qa.items() for lang in langs]
    out += [f"long-doc/{d}/en/{name}" for d, names in long_doc.items() for name in names]
    return tuple(out)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "miracl",
            tuple(
                [
                    "ar",
                    "bn",
                    "en",
                    "es",
                    "fa",
                    "fi",
                    "fr",
                    "hi",
                    "id",
                    "ja",
                    "ko",
                    "ru",
                    "sw",
                    "te",
                    "th",
                    "zh",
                    "de",
                    "yo",
                ]
            ),
            ("train", "dev"),
            "dev",
            "qrels",
            "ndcg_at_10",
            (10, 100),
            "hub miracl/miracl-corpus (corpus) and miracl/miracl (topics, qrels)",
        ),
        Suite(
            "mkqa",
            tuple(
                [
                    "en",
                    "ar",
                    "fi",
                    "ja",
                    "ko",
                    "ru",
                    "es",
                    "sv",
                    "he",
                    "th",
                    "da",
                    "de",
                    "fr",
                    "it",
                    "nl",
                    "pl",
                    "pt",
                    "hu",
                    "vi",
                    "ms",
                    "km",
                    "no",
                    "tr",
                    "zh_cn",
                    "zh_hk",
                    "zh_tw",
                ]
            ),
            ("test",),
            "test",
            "answers",
            "qa_recall_at_20",
            (20, 100),
            "hub BeIR/nq (corpus) and Shitao/bge-m3-data MKQA_test-data.zip (questions, answers)",
            shared_corpus=True,
        ),
        Suite(
            "mldr",
            tuple(["ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "pt", "ru", "th", "zh"]),
            ("train", "dev", "test"),
            "test",
            "qrels",
            "ndcg_at_10",
            (10, 100),
            "hub Shitao/MLDR",
        ),
        Suite(
            "msmarco",
            ("passage", "document"),
            ("dev", "dl19", "dl20"),
            "dev",
            "qrels",
            "mrr_at_10",
            (10, 100),
            "hub Tevatron/msmarco-passage-corpus, BeIR/msmarco(-qrels) and the TREC DL qrels",
        ),
        Suite(
            "bright",
            tuple(
                [
                    "biology",
                    "earth_science",
                    "economics",
                    "psychology",
                    "robotics",
                    "stackoverflow",
                    "sustainable_living",
                    "leetcode",
                    "pony",
                    "aops",
                    "theoremqa_questions",
                    "theoremqa_theorems",
                ]
            ),
            (
                "examples",
                "Gemini-1.0_reason",
                "claude-3-opus_reason",
                "gpt4_reason",
                "grit_reason",
                "llama3-70b_reason",
            ),
            "examples",
            "qrels",
            "ndcg_at_10",
            (10, 100),
            "hub xlangai/bright",
            exclude_zero=True,
        ),
        Suite(
            "airbench",
            _air_bench_subsets(),
            ("dev", "test"),
            "dev",
            "qrels",
            "ndcg_at_10",
            (1, 3, 5, 10, 50, 100, 1000),
            "hub AIR-Bench/<task type>_<domain>_<language> (version AIR-Bench_24.05) and "
            "AIR-Bench/qrels-<task type>_<domain>_<language>-dev (test qrels are private)",
            result_layout="air-bench",
        ),
    )
}


def suite(name: str) -> Suite:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in SUITES:
        raise InputError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    return SUITES[key]


@dataclass(frozen=True)
class SuiteData:
    """One subset and split: the retrieval dataset (documents ``title + " " + text``), and
    for MKQA each question's answers (its ``qrels`` are empty)."""

    dataset: RetrievalDataset
    answers: dict[str, list[str]] | None = None


def _required(path: Path, s: Suite, subset: str, split: str, folder: Path) -> Path:
    if not path.is_file():
        where = folder if s.shared_corpus and path.name == "corpus.jsonl" else folder / subset
        raise InputError(
            f"{s.name} {subset} {split}: missing {path} — put corpus.jsonl, {split}_queries.jsonl and "
            f"{split}_qrels.jsonl (the reference's layout) in {where}, or fetch them with --download "
            f"(from {s.source})"
        )
    return path


def load_subset(s: Suite, folder: str | Path, subset: str, split: str) -> SuiteData:
    """Read one subset and split of ``s`` from ``folder`` (see the module docstring)."""
    root = Path(folder)
    if subset not in s.subsets:
        raise InputError(f"{s.name} has no subset {subset!r}; it has: {', '.join(s.subsets)}")
    if split not in s.splits:
        raise InputError(f"{s.name} has no split {split!r}; it has: {', '.join(s.splits)}")
    base = root / subset
    corpus_file = _required((root if s.shared_corpus else base) / "corpus.jsonl", s, subset, split, root)
    queries_file = _required(base / f"{split}_queries.jsonl", s, subset, split, root)
    qrels_file = _required(base / f"{split}_qrels.jsonl", s, subset, split, root)
    doc_ids, docs, seen = [], [], set()
    for n, r in iter_jsonl(corpus_file):
        did, text = _field(r, "id", corpus_file, n), _field(r, "text", corpus_file, n)
        if did in seen:
            raise InputError(f"{corpus_file}:{n}: document id {did!r} given twice")
        seen.add(did)
        title = r.get("title") or ""
        doc_ids.append(did)
        docs.append(f"{title} {text}".strip())
    queries = {
        _field(r, "id", queries_file, n): _field(r, "text", queries_file, n)
        for n, r in iter_jsonl(queries_file)
    }
    qrels: dict[str, dict[str, int]] = {}
    answers: dict[str, list[str]] | None = {} if s.judged == "answers" else None
    for n, r in iter_jsonl(qrels_file):
        qid = _field(r, "qid", qrels_file, n)
        if qid not in queries:
            raise InputError(f"{qrels_file}:{n}: query {qid!r} is not in {queries_file.name}")
        if answers is not None:
            got = r.get("answers") if isinstance(r, dict) else None
            if not isinstance(got, list) or not all(isinstance(a, str) for a in got):
                raise InputError(f'{qrels_file}:{n}: expected "answers", a list of strings')
            answers[qid] = got
            continue
        did = _field(r, "docid", qrels_file, n)
        if did not in seen:
            raise InputError(f"{qrels_file}:{n}: document {did!r} is not in {corpus_file.name}")
        try:
            qrels.setdefault(qid, {})[did] = int(r["relevance"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f'{qrels_file}:{n}: expected an integer "relevance"') from None
    judged = answers if answers is not None else qrels
    if not judged:
        raise InputError(f"{qrels_file} judges no query")
    query_ids = [q for q in queries if q in judged]
    dataset = RetrievalDataset(
        name=f"{s.name}-{subset}",
        split=split,
        doc_ids=doc_ids,
        docs=docs,
        query_ids=query_ids,
        queries=[queries[q] for q in query_ids],
        qrels=qrels,
        fingerprint=_fingerprint([corpus_file, queries_file, qrels_file]),
    )
    return SuiteData(dataset, answers)


def _field(r: object, key: str, path: Path, n: int) -> str:
    if not isinstance(r, dict) or r.get(key) is None:
        raise InputError(f"{path}:{n}: expected a JSON object with {key!r}")
    value = r[key]
    if key == "text" and not isinstance(value, str):
        raise InputError(f"{path}:{n}: {key!r} must be a string")
    return str(value)


def _fingerprint(files: Sequence[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# -- metrics ----------------------------------------------------------------------------

Run = Mapping[str, Mapping[str, float]]


def _ranked(docs: Mapping[str, float]) -> list[str]:
    return [d for d, _ in sorted(docs.items(), key=lambda kv: -kv[1])]


def reference_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Run, k_values: Sequence[int]
) -> dict[str, float]:
    """The reference's metrics for a judged run (see the module docstring), keyed like it."""
    import pytrec_eval

    ks = sorted(set(k_values))
    joined = ",".join(map(str, ks))
    measures = {f"map_cut.{joined}", f"ndcg_cut.{joined}", f"recall.{joined}", f"P.{joined}"}
    judged = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    scored = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()}
    per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(scored)
    n = len(per_query)
    out: dict[str, float] = {}
    for k in ks:
        for name, key in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("precision", "P")):
            total = sum(v[f"{key}_{k}"] for v in per_query.values())
            out[f"{name}_at_{k}"] = round(total / n, 5) if n else 0.0
    top = max(ks)
    mrr = dict.fromkeys(ks, 0.0)
    cap = dict.fromkeys(ks, 0.0)
    for qid, docs in run.items():
        relevant = {d for d, r in judged.get(qid, {}).items() if r > 0}
        ranked = _ranked(docs)[:top]
        first = next((i for i, d in enumerate(ranked) if d in relevant), None)
        for k in ks:
            if first is not None and first < k:
                mrr[k] += 1.0 / (first + 1)
            if relevant:
                cap[k] += len(relevant & set(ranked[:k])) / min(len(relevant), k)
    for k in ks:
        out[f"mrr_at_{k}"] = round(mrr[k] / len(judged), 5)
        out[f"recall_cap_at_{k}"] = round(cap[k] / len(judged), 5)
    return out


def _tokens(text: str) -> list[str]:
    """The reference's simple tokenizer on NFD text, lower-cased: runs of letters, numbers
    and marks, and single other characters that are neither space nor control."""
    import regex

    pattern = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=regex.IGNORECASE | regex.UNICODE)
    return [m.group().lower() for m in pattern.finditer(unicodedata.normalize("NFD", text))]


def has_answer(answers: Sequence[str], text: str) -> bool:
    """Whether any answer's tokens appear in ``text``'s as a contiguous run."""
    words = _tokens(text)
    for answer in answers:
        a = _tokens(answer)
        if a and any(words[i : i + len(a)] == a for i in range(len(words) - len(a) + 1)):
            return True
    return False


def answer_recall(
    answers: Mapping[str, Sequence[str]], run: Run, passages: Mapping[str, str], k_values: Sequence[int]
) -> dict[str, float]:
    """MKQA's ``qa_recall_at_k``: the share of questions with an answer-holding passage in
    their top k."""
    ks = sorted(set(k_values))
    hits = dict.fromkeys(ks, 0)
    for qid in answers:
        ranked = _ranked(run.get(qid, {}))[: max(ks)]
        first = next((i for i, d in enumerate(ranked) if has_answer(answers[qid], passages[d])), None)
        for k in ks:
            hits[k] += first is not None and first < k
    n = len(answers)
    return {f"qa_recall_at_{k}": hits[k] / n if n else 0.0 for k in ks}


def without_excluded(run: Run, qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
    """BRIGHT: each query's results less the documents judged 0 for it (its excluded ids)."""
    out = {}
    for qid, docs in run.items():
        excluded = {d for d, r in qrels.get(qid, {}).items() if r == 0}
        out[qid] = {d: s for d, s in docs.items() if d not in excluded}
    return out


def search_results_file(
    folder: Path, model: str, reranker: str | None, subset: str, split: str, layout: str = "flag"
) -> Path:
    """Where the reference keeps a subset's search results: ``<out>/<model>/<reranker or
    NoReranker>/<subset>-<split>.json``; AIR-Bench's ``.../<task type>/<domain>/<language>_<dataset>_<split>.json``."""
    base = folder / model / (reranker or "NoReranker")
    if layout == "air-bench":
        task_type, domain, lang, dataset = subset.split("/")
        return base / task_type / domain / f"{lang}_{dataset}_{split}.json"
    return base / f"{subset}-{split}.json"


def write_search_results(
    path: Path, *, eval_name: str, model: str, reranker: str | None, subset: str, split: str, run: Run
) -> None:
    from bgekit.io import atomic_write

    results = {q: dict(docs) for q, docs in run.items()}
    if eval_name == "airbench":  # its own keys
        task_type, domain, lang, dataset = subset.split("/")
        body = {
            "model_name": model,
            "reranker_name": reranker or "NoReranker",
            "benchmark_version": "AIR-Bench_24.05",
            "task_type": task_type,
            "domain": domain,
            "language": lang,
            "dataset_name": dataset,
            "split": split,
            "search_results": results,
        }
    else:
        body = {
            "eval_name": eval_name,
            "model_name": model,
            "reranker_name": reranker or "NoReranker",
            "split": split,
            "dataset_name": subset,
            "search_results": results,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(json.dumps(body, indent=4, ensure_ascii=False).encode())


def write_eval_results(folder: Path, metrics: Mapping[str, Mapping[str, float]]) -> Path:
    """``EVAL/eval_results.json`` beside the search results: ``{"<subset>-<split>": metrics}``,
    merged with what is there (subsets evaluated earlier keep their entries) under the
    folder's writer lock, so runs of other subsets at once into the same output lose none."""
    from bgekit.index.lock import WriteLock
    from bgekit.io import atomic_write

    path = folder / "EVAL" / "eval_results.json"
    with WriteLock(path.parent, None):
        current = json.loads(path.read_text()) if path.is_file() else {}
        current.update({k: dict(v) for k, v in metrics.items()})
        with atomic_write(path) as f:
            f.write(json.dumps(current, indent=4).encode())
    return path
