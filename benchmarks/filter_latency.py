"""Filtered search on SciFact: latency against the same search unfiltered, and results equal
to filtering the exact ranking.

    python benchmarks/filter_latency.py [--queries 300] [--work DIR]

Index: SciFact's 5,183 abstracts with the packaged all-MiniLM-L6-v2 (dense; hybrid is dense +
BM25), built once in ``--work`` (default: a temporary folder). Each document gets seeded
random metadata: ``year`` (2000-2024) and ``group`` (a-j). Filters: none, ``year>=2012``
(about half the documents), ``group in a,b,c`` (about 30%), ``group=a`` (about 10%).
Queries are encoded once, outside the timing; latency is one query's ``search_encoded``
(p50 / p95 over the queries, after a warm-up pass), the filter's row mask included (it is
cached per index after a filter's first use, as a service repeating filters sees it; the
first use is timed apart). Equality: each filtered top 10 equals the unfiltered ranking of
every chunk, filtered and cut to 10 (dense), and the filtered hybrid's hits all pass.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from encode_throughput import cpu_line  # noqa: E402

FILTERS = (None, "year>=2012", "group in a,b,c", "group=a")


def build(work: Path) -> Path:
    from bgekit import Document, Embedder, EngineConfig, Index
    from bgekit.models.packaged import packaged_model_dir

    root = work / "scifact-index"
    if (root / "manifest.json").exists():
        return root
    rng = random.Random(0)
    docs = []
    for line in (ROOT / "data/scifact/corpus.jsonl").open():
        d = json.loads(line)
        meta = {"year": rng.randint(2000, 2024), "group": rng.choice("abcdefghij")}
        docs.append(Document(d["_id"], d["text"], d.get("title", ""), meta))
    embedder = Embedder.from_pretrained(str(packaged_model_dir()), engine=EngineConfig(progress=False))
    index = Index(embedder)
    start = time.perf_counter()
    index.add(docs)
    print(f"built: {len(docs)} documents, {index.num_chunks} chunks in {time.perf_counter() - start:.0f}s")
    index.save(root)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--work", type=Path, default=None)
    ns = ap.parse_args()
    from bgekit import Index
    from bgekit.retrieval import Filter

    work = ns.work or Path(tempfile.mkdtemp(prefix="bgekit-filter-"))
    root = build(work)
    index = Index.load(root)
    queries = [json.loads(x)["text"] for x in (ROOT / "data/scifact/queries.jsonl").open()][: ns.queries]
    model, flags = cpu_line()
    print(f"cpu: {model}; flags: {', '.join(flags)}; {len(index)} documents, {index.num_chunks} chunks\n")
    print(
        "| mode | filter | documents passing | first use (ms) | p50 / p95 ms | vs unfiltered p50 | equal to filtered exact ranking |"
    )
    print("|---|---|---|---|---|---|---|")
    docs = {d: i for i, d in enumerate(index.ids())}
    for mode in ("dense", "hybrid"):
        plan = index.plan(mode)  # type: ignore[arg-type]
        encoded = [index.encode_queries([q], plan) for q in queries]
        base_p50 = None
        for where in FILTERS:
            f = Filter.parse(where)
            passing = sum(f.matches(d.metadata, d.id, d.title) for d in index._docs)
            index._cache.pop("filters", None)
            start = time.perf_counter()
            index.search_encoded(encoded[0], queries[:1], 10, plan=plan, where=where)
            first = (time.perf_counter() - start) * 1000
            for q, text in zip(encoded, queries, strict=True):  # warm-up
                index.search_encoded(q, [text], 10, plan=plan, where=where)
            times, equal = [], 0
            for q, text in zip(encoded, queries, strict=True):
                start = time.perf_counter()
                hits = index.search_encoded(q, [text], 10, plan=plan, where=where)[0]
                times.append(time.perf_counter() - start)
                if mode == "dense":
                    every = index.search_encoded(q, [text], len(docs), plan=plan)[0]
                    want = [h.id for h in every if f.matches(h.metadata, h.id, h.title)][:10]
                    equal += [h.id for h in hits] == want
                else:
                    equal += all(f.matches(h.metadata, h.id, h.title) for h in hits) and len(hits) == min(
                        10, passing
                    )
            ms = np.array(times) * 1000
            p50 = float(np.percentile(ms, 50))
            base_p50 = base_p50 or p50
            print(
                f"| {mode} | {where or '(none)'} | {passing:,} | {first:.1f} | {p50:.2f} / {np.percentile(ms, 95):.2f} "
                f"| {p50 / base_p50:.2f}x | {equal} of {len(queries)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
