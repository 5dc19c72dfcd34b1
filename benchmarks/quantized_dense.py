"""Dense vectors stored as float32 / float16 / int8 / binary on SciFact: bytes per document,
nDCG@10 and Recall@100 against float32, and single-query latency; then the same stores at
``--synthetic`` random vectors (build time, bytes, query latency) for the scaling plan.

    python benchmarks/quantized_dense.py --work DIR [--synthetic 1000000] [--model FOLDER]

The packaged all-MiniLM-L6-v2 encodes SciFact's corpus and test queries once (fp32, saved in
``DIR``). Each storage type is a :class:`bgekit.retrieval.dense_store.DenseStore` searched by
the search core (``bgekit.retrieval.search``, mode ``dense``) for the 100 best documents per
query — the path the embedded index takes with ``IndexConfig(dense_dtype=...)``: float32 by
the product (faiss's exact scan for one query), float16 upcast, int8 through its calibration
(fitted on the corpus), binary by Hamming distance then the ``rescore`` nearest rescored with
int8 codes (only the bits need memory; the codes are read for the candidates).
Latency: one query at a time over the whole corpus, p50 of the 300 test queries, 2 threads.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--synthetic", type=int, default=0, help="also time the stores at this many vectors")
    ap.add_argument("--hnsw-rows", type=int, default=200_000, help="rows for the HNSW build timing")
    ap.add_argument("--model", default=None)
    ns = ap.parse_args()
    from bgekit import Embedder, EngineConfig
    from bgekit.eval import load_beir
    from bgekit.eval.metrics import compute_metrics
    from bgekit.models.packaged import packaged_model_dir
    from bgekit.retrieval import Corpus, search
    from bgekit.retrieval.dense_store import DenseStore
    from bgekit.types import Encoded

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from encode_throughput import cpu_line

    cpu, flags = cpu_line()
    print(f"cpu: {cpu}; flags: {', '.join(flags)}")
    data = load_beir(ROOT / "data/scifact", "test")
    ns.work.mkdir(parents=True, exist_ok=True)
    cache = ns.work / "scifact-minilm-fp32.npz"
    if not cache.exists():
        emb = Embedder.from_pretrained(
            ns.model or str(packaged_model_dir()), engine=EngineConfig(dtype="float32", progress=False)
        )
        d = emb.encode(data.docs).dense
        q = emb.encode(data.queries, kind="query").dense
        np.savez(cache, docs=d, queries=q)
    with np.load(cache) as z:
        docs, queries = z["docs"].astype(np.float32), z["queries"].astype(np.float32)
    runs: list[tuple[str, str, int]] = [
        ("float32", "float32", 0),
        ("float16", "float16", 0),
        ("int8 (calibrated scalar)", "int8", 0),
        ("binary, the 100 Hamming-nearest rescored (int8)", "binary", 100),
        ("binary, the 400 Hamming-nearest rescored (int8; the default)", "binary", 400),
        ("binary, the 1600 Hamming-nearest rescored (int8)", "binary", 1600),
    ]
    k = 100
    base = None
    print(
        "\n| storage | resident bytes / doc | stored bytes / doc | nDCG@10 | Recall@100 "
        "| nDCG@10 vs float32 | p50 ms / query |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, dtype, rescore in runs:
        store = DenseStore.build(docs, dtype, rescore=max(rescore, 1))  # type: ignore[arg-type]
        corpus = Corpus(dense=store)
        ranked = search(corpus, Encoded(dense=queries), k, mode="dense")
        run = {
            qid: {data.doc_ids[j]: float(s) for j, s in zip(r.indices, r.scores, strict=True)}
            for qid, r in zip(data.query_ids, ranked, strict=True)
        }
        m = compute_metrics(data.qrels, run)
        times = []
        for i in range(len(queries)):
            one = Encoded(dense=queries[i : i + 1])
            t = time.perf_counter()
            search(corpus, one, k, mode="dense")
            times.append(time.perf_counter() - t)
        base = base if base is not None else m["ndcg@10"]
        n = len(docs)
        print(
            f"| {label} | {store.resident_bytes() / n:.0f} | {store.stored_bytes() / n:.0f} "
            f"| {100 * m['ndcg@10']:.2f} | {100 * m['recall@100']:.2f} "
            f"| {100 * (m['ndcg@10'] - base):+.2f} | {1000 * statistics.median(times):.2f} |",
            flush=True,
        )
    if ns.synthetic:
        synthetic(ns.synthetic, ns.hnsw_rows, docs.shape[1], ns.work)


def synthetic(n: int, hnsw_rows: int, dim: int, work: Path) -> None:
    """Random unit vectors: store build time, bytes, save time and single-query p50."""
    import faiss

    from bgekit.index import storage
    from bgekit.retrieval import Corpus, search
    from bgekit.retrieval.corpus import Hnsw
    from bgekit.retrieval.dense_store import DenseStore
    from bgekit.types import Encoded

    rng = np.random.default_rng(0)
    vecs = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(n, start + 100_000) - start, dim), dtype=np.float32)
        vecs[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = rng.standard_normal((30, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"\n{n:,} random unit vectors of {dim} dimensions, faiss threads {faiss.omp_get_max_threads()}")
    print(
        "\n| storage | build s | save s | resident MB | stored MB | p50 ms / query | p50 ms, 10 queries a call |"
    )
    print("|---|---|---|---|---|---|---|")
    for dtype in ("float32", "float16", "int8", "binary"):
        t = time.perf_counter()
        store = DenseStore.build(vecs, dtype)  # type: ignore[arg-type]
        corpus = Corpus(dense=store)
        if dtype == "float32":
            corpus.flat()  # the one-query scan's faiss copy, built on first search
        built = time.perf_counter() - t
        shutil.rmtree(work / f"synthetic-{dtype}", ignore_errors=True)
        t = time.perf_counter()
        storage.write_generation(work / f"synthetic-{dtype}", store.arrays(), {}, {"counts": {}})
        saved = time.perf_counter() - t
        one, ten = [], []
        for i in range(len(queries)):
            t = time.perf_counter()
            search(corpus, Encoded(dense=queries[i : i + 1]), 10, mode="dense")
            one.append(time.perf_counter() - t)
        for i in range(0, len(queries), 10):
            t = time.perf_counter()
            search(corpus, Encoded(dense=queries[i : i + 10]), 10, mode="dense")
            ten.append(time.perf_counter() - t)
        print(
            f"| {dtype} | {built:.1f} | {saved:.1f} | {store.resident_bytes() / 1e6:.0f} "
            f"| {store.stored_bytes() / 1e6:.0f} | {1000 * statistics.median(one):.1f} "
            f"| {1000 * statistics.median(ten):.1f} |",
            flush=True,
        )
        del store, corpus
    sub = vecs[:hnsw_rows]
    t = time.perf_counter()
    corpus = Corpus(dense=sub, hnsw=Hnsw())
    corpus.ann()
    built = time.perf_counter() - t
    times = []
    for i in range(len(queries)):
        t = time.perf_counter()
        search(corpus, Encoded(dense=queries[i : i + 1]), 10, mode="dense")
        times.append(time.perf_counter() - t)
    print(
        f"\nHNSW (M=32, efSearch=128) over {hnsw_rows:,} of them: build {built:.1f} s, "
        f"p50 {1000 * statistics.median(times):.2f} ms / query",
        flush=True,
    )


if __name__ == "__main__":
    main()
