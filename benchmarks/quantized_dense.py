"""Dense vectors stored as float32 / float16 / int8 / binary on SciFact: bytes per document,
nDCG@10 and Recall@100 against float32, and single-query latency.

    python benchmarks/quantized_dense.py --work DIR [--rescore 400] [--model FOLDER]

The packaged all-MiniLM-L6-v2 encodes SciFact's corpus and test queries once (fp32, saved in
``DIR``); each storage type is then searched for the 100 best documents per query:
float32 and float16 by the exact product (float16 upcast), int8 by the calibrated scalar
codes (calibrated on the corpus), binary by Hamming distance alone and by Hamming distance
then rescoring the ``--rescore`` (and 4x as many) nearest with the float query against their
sign vectors (``bgekit.scoring.quantize``), or against their int8 codes (which can stay on
disk: only the binary codes need memory).
Latency: one query at a time over the whole corpus, p50 of the 300 test queries, 2 threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--rescore", type=int, default=400)
    ap.add_argument("--model", default=None)
    ns = ap.parse_args()
    from bgekit import Embedder, EngineConfig
    from bgekit.eval import load_beir
    from bgekit.eval.metrics import compute_metrics
    from bgekit.models.packaged import packaged_model_dir
    from bgekit.scoring.quantize import (
        Int8Calibration,
        binary_search,
        bytes_per_vector,
        hamming,
        int8_scores,
        pack_binary,
        quantize_int8,
    )

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
    dim = docs.shape[1]
    k = 100

    def topk(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(scores, idx, axis=1)

    half = docs.astype(np.float16)
    cal = Int8Calibration.fit(docs)
    codes = quantize_int8(docs, cal)
    bits = pack_binary(docs)
    runs = {
        "float32": ("float32", lambda q: topk(q @ docs.T)),
        "float16": ("float16", lambda q: topk(q @ half.T.astype(np.float32))),
        "int8 (calibrated scalar)": ("int8", lambda q: topk(int8_scores(q, codes, cal))),
        "binary, Hamming only": ("binary", lambda q: topk(-hamming(pack_binary(q), bits).astype(np.float32))),
        f"binary + rescoring the {ns.rescore} nearest": (
            "binary",
            lambda q: binary_search(q, bits, dim, k, ns.rescore),
        ),
        f"binary + rescoring the {4 * ns.rescore} nearest": (
            "binary",
            lambda q: binary_search(q, bits, dim, k, 4 * ns.rescore),
        ),
        f"binary in memory, the {ns.rescore} nearest rescored with int8 codes read from disk": (
            "binary",
            lambda q: int8_rescore(q),
        ),
    }

    def int8_rescore(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist = hamming(pack_binary(q), bits)
        cand = np.argpartition(dist, ns.rescore - 1, axis=1)[:, : ns.rescore]
        out_i = np.empty((len(q), k), dtype=np.int64)
        out_s = np.empty((len(q), k), dtype=np.float32)
        for i in range(len(q)):
            s = int8_scores(q[i : i + 1], codes[cand[i]], cal)[0]
            order = np.argsort(-s, kind="stable")[:k]
            out_i[i], out_s[i] = cand[i][order], s[order]
        return out_i, out_s

    base = None
    print("\n| storage | bytes / doc (dense) | nDCG@10 | Recall@100 | nDCG@10 vs float32 | p50 ms / query |")
    print("|---|---|---|---|---|---|")
    for label, (dtype, fn) in runs.items():
        idx, scores = fn(queries)
        run = {
            qid: {data.doc_ids[j]: float(s) for j, s in zip(idx[i], scores[i], strict=True)}
            for i, qid in enumerate(data.query_ids)
        }
        m = compute_metrics(data.qrels, run)
        times = []
        for i in range(len(queries)):
            t = time.perf_counter()
            fn(queries[i : i + 1])
            times.append(time.perf_counter() - t)
        base = base if base is not None else m["ndcg@10"]
        print(
            f"| {label} | {bytes_per_vector(dtype, dim)} | {100 * m['ndcg@10']:.2f} | {100 * m['recall@100']:.2f} "
            f"| {100 * (m['ndcg@10'] - base):+.2f} | {1000 * statistics.median(times):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
