"""Which hybrid defaults (candidates per first-stage scorer, fusion) to ship: SciFact nDCG@10
and search time of the packaged all-MiniLM-L6-v2's hybrid (dense + BM25, the lexical scorer
of a model without a sparse head), through the one search core.

    python benchmarks/hybrid_defaults.py [--cache-dir DIR] [--dtype float32]

Encodings are computed once (and cached with ``--cache-dir``); every setting searches the
same vectors. ``k`` is 10 (what nDCG@10 reads and what an index asks for per page): each
first-stage scorer contributes ``max(candidates, k)`` rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--dtype", default="auto")
    ns = ap.parse_args()
    from bgekit import Embedder, EngineConfig
    from bgekit.eval import load_beir
    from bgekit.eval.metrics import compute_metrics
    from bgekit.eval.retrieval import RetrievalEvalConfig, first_stage, to_run
    from bgekit.models.packaged import packaged_model_dir
    from bgekit.retrieval import HybridConfig

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from encode_throughput import cpu_line

    data = load_beir(ROOT / "data" / "scifact")
    emb = Embedder.from_pretrained(
        str(packaged_model_dir()),
        engine=EngineConfig(dtype=ns.dtype, progress=False),  # type: ignore[arg-type]
    )
    model, flags = cpu_line()
    print(f"cpu: {model} ({', '.join(flags)}); model runs {emb.compute()[0]}\n")
    print("| mode | fusion | candidates | nDCG@10 | Recall@10 | search s (300 queries) |")
    print("|---|---|---|---|---|---|")
    rows = [("dense", "auto", None)]
    rows += [("hybrid", f, c) for f in ("rrf", "weighted") for c in (10, 50, 100, 200, 1000, None)]
    for mode, fusion, cand in rows:
        cfg = RetrievalEvalConfig(
            mode=mode,  # type: ignore[arg-type]
            k=10,
            hybrid=HybridConfig(candidates=cand, fusion=fusion),  # type: ignore[arg-type]
            cache_dir=ns.cache_dir,
            progress=False,
        )
        timings: dict[str, float] = {}
        hits = first_stage(data, emb, cfg, timings)
        m = compute_metrics(data.qrels, to_run(data, hits))
        label = "all" if cand is None else str(cand)
        print(
            f"| {mode} | {fusion} | {label if mode == 'hybrid' else '-'} | {100 * m['ndcg@10']:.2f} | "
            f"{100 * m['recall@10']:.2f} | {timings['search']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
