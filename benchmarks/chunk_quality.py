"""Chunks that follow the text against token windows, on SciFact: retrieval quality of the
index, chunk counts, chunks over the model's length, chunks that start inside a word.

    python benchmarks/chunk_quality.py [--chunk-tokens N] [--splits text,tokens]

The index over SciFact's 5,183 abstracts with the packaged all-MiniLM-L6-v2 (256-token
window; default chunk size: the model's length less the title; 64 overlap), once per
``split``; SciFact's 300 test queries searched ``dense`` and ``hybrid`` (dense + BM25, the
index's default), 100 documents per query, nDCG@10 and Recall@100 by pytrec_eval. The same
numbers for the long-document benchmark come from ``benchmarks/long_docs.py --split``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from encode_throughput import cpu_line  # noqa: E402


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-tokens", type=int, default=None)
    ap.add_argument("--splits", default="text,tokens")
    ns = ap.parse_args()
    from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig
    from bgekit.eval import load_beir
    from bgekit.eval.metrics import compute_metrics
    from bgekit.models.packaged import packaged_model_dir

    data = load_beir(ROOT / "data/scifact", "test")
    docs = []
    for line in (ROOT / "data/scifact/corpus.jsonl").open():
        d = json.loads(line)
        docs.append(Document(d["_id"], d["text"], d.get("title", "")))
    embedder = Embedder.from_pretrained(str(packaged_model_dir()), engine=EngineConfig(progress=False))
    qids = list(data.qrels)
    queries = [data.queries[data.query_ids.index(q)] for q in qids]
    model, flags = cpu_line()
    print(f"cpu: {model}; flags: {', '.join(flags)}\n")
    print(
        "| split | chunks | chunks over the model's length (encode warning) | chunks starting inside a word | dense nDCG@10 | dense R@100 | hybrid nDCG@10 | hybrid R@100 | build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for split in ns.splits.split(","):
        handler = _Count()
        logging.getLogger("bgekit").addHandler(handler)
        index = Index(embedder, IndexConfig(split=split, chunk_tokens=ns.chunk_tokens))  # type: ignore[arg-type]
        start = time.perf_counter()
        index.add(docs)
        seconds = time.perf_counter() - start
        logging.getLogger("bgekit").removeHandler(handler)
        over = next((m for m in handler.messages if "truncated" in m), "none")
        text_of = {d.id: d.text for d in docs}
        mid = 0
        for doc_pos, chunk in zip(index._chunk_doc.tolist(), index._chunk_text, strict=True):
            text = text_of[index._docs[doc_pos].id]
            body = chunk.partition("\n\n")[2] if "\n\n" in chunk and chunk not in text else chunk
            at = text.find(body.strip()[:40])
            mid += at > 0 and not text[at - 1].isspace()
        row = [split, f"{index.num_chunks:,}", over, f"{mid:,}"]
        for mode in ("dense", "hybrid"):
            hits = index.search(queries, 100, mode=mode)  # type: ignore[arg-type]
            run = {q: {h.id: h.score for h in hs} for q, hs in zip(qids, hits, strict=True)}
            m = compute_metrics(data.qrels, run)
            row += [f"{100 * m['ndcg@10']:.2f}", f"{100 * m['recall@100']:.2f}"]
        row.append(f"{seconds:.0f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
