"""Long-document retrieval, built offline from shipped data: which long-input policy wins.

    python benchmarks/long_docs.py --work DIR [--docs 1000] [--min-tokens 2000]
        [--max-tokens 8000] [--only truncate,chunk,...] [--model FOLDER]

The data (deterministic, seed 0): every SciFact document relevant to a test query, plus
distractor documents up to ``--docs``, each set ("title. text") at a random document
boundary inside a long document of ``--min-tokens``..``--max-tokens`` tokens (the model's
tokenizer) made of other SciFact documents' text (drawn from documents that are neither
relevant nor distractors, so no filler is relevant to any query). A long document keeps
its original id and has no title; queries and qrels are SciFact's test split, unchanged.

Policies (each in its own process: peak RSS is that process's high-water mark):

- ``truncate`` / ``chunk`` / ``mcls``: one vector per document, ``EmbedderSettings(long_input=...)``,
  dense search over the documents (``bgekit.eval.evaluate_retrieval``).
- ``index``: bgekit's index, chunks of the model's length (64 overlap) encoded on their own,
  a document scored by its best chunk (dense), and the same index searched ``hybrid`` (dense
  + BM25 over the chunks, the index's default fusion), chunks cut where the text allows
  (``split="text"``, the default); ``index-tokens`` (not in the default list): the same with
  plain token windows (``split="tokens"``); ``late``: an index with
  ``chunking="late"`` and ``--late-chunk-tokens`` (128) per chunk.
- ``bm25``: bgekit's BM25 over the whole long documents.
- ``truncate-cls`` / ``mcls-cls`` (not in the default list): both with the model's CLS state
  as its vector (``EmbedderSettings(pooling="cls")``), for a mean-pooled model that MCLS
  refuses: what MCLS changes against truncation under the same pooling.

Reported: nDCG@10 and Recall@100 (pytrec_eval), the seconds spent encoding the corpus, the
tokens the model ran (windows and special tokens included) per second, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("truncate", "chunk", "mcls", "index", "late", "bm25")  # "index" reports hybrid too


def model_dir(given: str | None) -> str:
    if given:
        return given
    from bgekit.models.packaged import packaged_model_dir

    return str(packaged_model_dir())


def build(work: Path, model: str, n_docs: int, lo: int, hi: int) -> Path:
    """The long-document dataset in BEIR layout under ``work/data`` (written once)."""
    out = work / f"data-{n_docs}-{lo}-{hi}"
    if (out / "corpus.jsonl").exists():
        return out
    from bgekit.models.tokenizer import TextTokenizer

    tok = TextTokenizer.from_folder(Path(model), with_type_ids=False)
    src = ROOT / "data/scifact"
    corpus = [json.loads(x) for x in (src / "corpus.jsonl").open(encoding="utf-8")]
    qrels = [
        line.split("\t") for line in (src / "qrels/test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    ]
    relevant = sorted({row[1] for row in qrels})
    rng = random.Random(0)
    text = {d["_id"]: f"{d['title']}. {d['text']}".strip() for d in corpus}
    others = [d["_id"] for d in corpus if d["_id"] not in set(relevant)]
    rng.shuffle(others)
    distractors = others[: max(0, n_docs - len(relevant))]
    pool = others[len(distractors) :]
    lengths = dict(zip(pool, (len(x) for x in tok.ids([text[i] for i in pool])), strict=True))
    targets = relevant + distractors
    target_len = dict(zip(targets, (len(x) for x in tok.ids([text[i] for i in targets])), strict=True))
    docs = []
    for doc_id in targets:
        goal = rng.randint(lo, hi)
        fill: list[str] = []
        total = target_len[doc_id]
        while total < goal:
            f = rng.choice(pool)
            fill.append(f)
            total += lengths[f]
        at = rng.randint(0, len(fill))
        parts = [text[f] for f in fill[:at]] + [text[doc_id]] + [text[f] for f in fill[at:]]
        docs.append(
            {"_id": doc_id, "title": "", "text": " ".join(parts), "position": at, "fillers": len(fill)}
        )
    tmp = out.with_name(out.name + ".tmp")
    (tmp / "qrels").mkdir(parents=True, exist_ok=True)
    with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"_id": d["_id"], "title": "", "text": d["text"]}) + "\n")
    (tmp / "queries.jsonl").write_bytes((src / "queries.jsonl").read_bytes())
    (tmp / "qrels/test.tsv").write_bytes((src / "qrels/test.tsv").read_bytes())
    tokens = [len(x) for x in tok.ids([d["text"] for d in docs])]
    first = sum(d["position"] == 0 for d in docs)
    stats = {
        "documents": len(docs),
        "relevant": len(relevant),
        "tokens_mean": sum(tokens) / len(tokens),
        "tokens_min": min(tokens),
        "tokens_max": max(tokens),
        "tokens_total": sum(tokens),
        "relevant_text_first": first,
    }
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    tmp.rename(out)
    return out


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_policy(policy: str, data: Path, model: str, late_tokens: int) -> dict[str, Any]:
    """One policy, in this process: metrics, encode seconds, model tokens, peak RSS."""
    from bgekit import Embedder, EmbedderSettings, EngineConfig
    from bgekit.errors import BgekitError
    from bgekit.eval import RetrievalEvalConfig, evaluate_retrieval, load_beir
    from bgekit.eval.metrics import compute_metrics
    from bgekit.index import Document, Index, IndexConfig

    engine = EngineConfig(progress=False)
    dataset = load_beir(data, "test")
    out: dict[str, Any] = {"policy": policy}
    if policy in ("truncate", "chunk", "mcls", "bm25", "truncate-cls", "mcls-cls"):
        embedder = None
        if policy != "bm25":
            # "-cls": the model's CLS state as its vector, whatever it was trained with (only to
            # see what MCLS changes against truncation under the same pooling)
            long, _, pooling = policy.partition("-")
            settings = EmbedderSettings(long_input=long, pooling=pooling or None)  # type: ignore[arg-type]
            try:
                embedder = Embedder.from_pretrained(model, settings=settings, engine=engine)
            except BgekitError as e:
                return {**out, "skipped": str(e)}
        cfg = RetrievalEvalConfig(mode="dense" if embedder else "bm25", k=100, progress=False)
        report = evaluate_retrieval(dataset, embedder, cfg)
        out["metrics"] = report.metrics
        out["encode_seconds"] = report.timings.get("encode_corpus", 0.0)
        if embedder is not None:
            seqs = embedder.tokenize(dataset.docs)
            if embedder.long.policy == "chunk":
                out["model_tokens"] = sum(len(p) for p in embedder._split(seqs).pieces)
            else:
                out["model_tokens"] = sum(len(s) for s in seqs)
            cut, chunked = embedder.long_counts(seqs)
            out["truncated"], out["chunked"] = cut, chunked
    else:
        embedder = Embedder.from_pretrained(model, engine=engine)
        late = policy == "late"
        config = (
            IndexConfig(chunking="late", chunk_tokens=late_tokens, chunk_overlap=0)
            if late
            else IndexConfig(split="tokens" if policy == "index-tokens" else "text")
        )
        index = Index(embedder, config)
        docs = [Document(i, t) for i, t in zip(dataset.doc_ids, dataset.docs, strict=True)]
        start = time.perf_counter()
        report = index.add(docs)
        out["encode_seconds"] = time.perf_counter() - start
        out["chunks"] = report.chunks
        if late:
            seqs = embedder.tokenizer.wrap_ids(embedder.tokenizer.ids(dataset.docs), 1 << 40)
            out["model_tokens"] = sum(len(p) for p in embedder._split(seqs).pieces)
        else:
            out["model_tokens"] = sum(len(s) for s in embedder.tokenize(index.chunk_texts()))
        for mode in ("dense", "hybrid") if not late else ("dense",):
            start = time.perf_counter()
            hits = index.search(dataset.queries, k=100, mode=mode)  # type: ignore[arg-type]
            seconds = time.perf_counter() - start
            run = {q: {h.id: h.score for h in hs} for q, hs in zip(dataset.query_ids, hits, strict=True)}
            metrics = compute_metrics(dataset.qrels, run)
            if mode == "dense":
                out["metrics"], out["search_seconds"] = metrics, seconds
            else:
                out["hybrid"] = {"metrics": metrics, "search_seconds": seconds}
    if out.get("encode_seconds"):
        out["model_tokens_per_s"] = out.get("model_tokens", 0) / out["encode_seconds"]
    out["peak_rss_gib"] = _peak_gib()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--min-tokens", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=8000)
    ap.add_argument("--late-chunk-tokens", type=int, default=128)
    ap.add_argument("--only", default=",".join(POLICIES))
    ap.add_argument("--model", default=None, help="embedder folder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one policy in this process
    ns = ap.parse_args()
    model = model_dir(ns.model)
    ns.work.mkdir(parents=True, exist_ok=True)
    data = build(ns.work, model, ns.docs, ns.min_tokens, ns.max_tokens)
    if ns.one:
        print(json.dumps(run_policy(ns.one, data, model, ns.late_chunk_tokens)))
        return 0
    stats = json.loads((data / "stats.json").read_text())
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next(
        (x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("Model name")), "?"
    )
    flags = next((x for x in cpu.splitlines() if x.startswith("Flags")), "")
    used = [
        f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags.split()
    ]
    print(f"machine: {model_name}, {platform.machine()}, flags {' '.join(used)}")
    print(f"data: {json.dumps(stats)}")
    results = []
    for policy in ns.only.split(","):
        cmd = [sys.executable, __file__, "--work", str(ns.work), "--docs", str(ns.docs)]
        cmd += ["--min-tokens", str(ns.min_tokens), "--max-tokens", str(ns.max_tokens)]
        cmd += ["--late-chunk-tokens", str(ns.late_chunk_tokens), "--one", policy, "--model", model]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{policy}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        res = json.loads(done.stdout.strip().splitlines()[-1])
        res["wall_seconds"] = time.perf_counter() - start
        results.append(res)
        print(json.dumps(res), flush=True)
    (ns.work / "long_docs.json").write_text(json.dumps({"data": stats, "results": results}, indent=2))
    print("\n| policy | nDCG@10 | Recall@100 | corpus encode s | model tokens/s | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['policy']} | n/a: {r['skipped'].replace(model, 'the model')} | | | | |")
            continue
        m = r["metrics"]
        rate = f"{r['model_tokens_per_s']:,.0f}" if r.get("model_tokens_per_s") else "-"
        enc = f"{r['encode_seconds']:.1f}" if r.get("encode_seconds") else "-"
        print(
            f"| {r['policy']} | {100 * m['ndcg@10']:.2f} | {100 * m['recall@100']:.2f} | {enc} | {rate} | "
            f"{r['peak_rss_gib']:.2f} |"
        )
        if "hybrid" in r:
            h = r["hybrid"]["metrics"]
            print(
                f"| hybrid (index chunks, dense + BM25) | {100 * h['ndcg@10']:.2f} | {100 * h['recall@100']:.2f} "
                "| (the index's) | | |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
