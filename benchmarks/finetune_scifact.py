"""Fine-tune the packaged all-MiniLM-L6-v2 on SciFact's train split and measure SciFact test.

    python benchmarks/finetune_scifact.py --work DIR [--stages mine,dense,m3,reranker]

Stages (each reuses the previous stages' files in --work):
  mine      809 train queries -> positives from qrels, hard negatives mined with the base
            model over the whole corpus (ranks --range, --negatives per query)
  dense     fine-tune the dense embedder (InfoNCE, in-batch + hard negatives), evaluate
            the base and the fine-tuned model (nDCG@10, dense, exact search)
  m3        turn the base model into an M3-style model (new sparse and multi-vector heads)
            with unified self-distillation, then m3-eval
  m3-eval   evaluate work/m3: dense, sparse, multi-vector and all three (multi-vector modes
            rescore the union of the dense and sparse top --m3-candidates)
  reranker  fine-tune a cross-encoder started from the same checkpoint (fresh 1-logit head);
            rerank the base model's top-100
Everything runs on the CPU threads torch is given; wall times are printed per stage and
the figures are appended to --work/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bgekit import Embedder, HybridConfig, Reranker  # noqa: E402
from bgekit.eval import RetrievalEvalConfig, compute_metrics, evaluate_retrieval, load_beir  # noqa: E402
from bgekit.eval.retrieval import to_run  # noqa: E402
from bgekit.index.documents import read_source  # noqa: E402
from bgekit.models.packaged import packaged_model_dir  # noqa: E402
from bgekit.retrieval import Corpus, search  # noqa: E402
from bgekit.train import (  # noqa: E402
    EmbedderTrainConfig,
    RerankerTrainConfig,
    beir_train_examples,
    load_train_data,
    mine_hard_negatives,
    train_embedder,
    train_reranker,
    write_train_data,
)

DATA = ROOT / "data" / "scifact"


def record(work: Path, key: str, value: object) -> None:
    path = work / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = value
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"== {key}: {json.dumps(value)}", flush=True)


def ndcg(model: str, work: Path, tag: str) -> float:
    emb = Embedder.from_pretrained(model)
    report = evaluate_retrieval(
        load_beir(DATA, "test"),
        emb,
        RetrievalEvalConfig(mode="dense", progress=False, cache_dir=work / "cache"),
    )
    return round(100 * report.metrics["ndcg@10"], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--stages", default="mine,dense,m3,reranker")
    ap.add_argument("--range", default="10:100")
    ap.add_argument("--negatives", type=int, default=15)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--passage-max-length", type=int, default=256)
    ap.add_argument("--reranker-max-length", type=int, default=256)
    ap.add_argument("--reranker-epochs", type=float, default=1)
    ap.add_argument("--reranker-lr", type=float, default=2e-4)
    ap.add_argument("--reranker-top", type=int, default=100)
    ap.add_argument("--m3-candidates", type=int, default=100, help="per mode, for multi-vector rescoring")
    args = ap.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    base = str(packaged_model_dir())
    mined = work / "train.mined.jsonl"
    common = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "group_size": args.group_size,
        "learning_rate": args.lr,
        "temperature": args.temperature,
        "passage_max_length": args.passage_max_length,
        "overwrite": True,
        "logging_steps": 5,
        "progress": False,
    }

    if "mine" in stages:
        t = time.perf_counter()
        start, end = (int(x) for x in args.range.split(":"))
        examples = beir_train_examples(DATA, "train")
        out = mine_hard_negatives(
            Embedder.from_pretrained(base),
            examples,
            read_source(DATA / "corpus.jsonl"),
            rank_range=(start, end),
            negatives=args.negatives,
        )
        write_train_data(mined, out)
        record(
            work,
            "mine",
            {
                "queries": len(out),
                "range": args.range,
                "negatives": args.negatives,
                "seconds": round(time.perf_counter() - t, 1),
            },
        )

    if "dense" in stages:
        t = time.perf_counter()
        res = train_embedder(base, load_train_data(mined), work / "dense", EmbedderTrainConfig(**common))
        train_s = time.perf_counter() - t
        before, after = ndcg(base, work, "base"), ndcg(str(work / "dense"), work, "dense")
        record(
            work,
            "dense",
            {
                "settings": common,
                "steps": res.steps,
                "train_seconds": round(train_s, 1),
                "total_seconds": round(time.perf_counter() - t, 1),
                "ndcg10_base": before,
                "ndcg10_finetuned": after,
            },
        )

    if "m3" in stages:
        t = time.perf_counter()
        res = train_embedder(
            base,
            load_train_data(mined),
            work / "m3",
            EmbedderTrainConfig(**common, m3=True, self_distill=True),
        )
        record(
            work,
            "m3-train",
            {"settings": common, "steps": res.steps, "train_seconds": round(time.perf_counter() - t, 1)},
        )

    if "m3" in stages or "m3-eval" in stages:
        t = time.perf_counter()
        emb = Embedder.from_pretrained(str(work / "m3"))
        ds = load_beir(DATA, "test")
        outputs = ("dense", "sparse", "multivector")
        docs = emb.encode(ds.docs, outputs=outputs)
        queries = emb.encode(ds.queries, kind="query", outputs=outputs)
        scores = {}
        # Dense and sparse search every document; multi-vector modes rescore the union of the
        # dense and sparse top --m3-candidates (as bgekit's index and BGE-M3's usage do).
        corpus = Corpus.from_encoded(docs)
        cfg = HybridConfig(weights=(0.4, 0.2, 0.4), candidates=args.m3_candidates)
        for name, mode in {
            "dense": "dense",
            "sparse": "sparse",
            "multivector": "multivector",
            "dense+sparse+multivector (0.4/0.2/0.4)": "hybrid",
        }.items():
            hits = search(corpus, queries, 100, mode=mode, config=cfg)  # type: ignore[arg-type]
            scores[name] = round(100 * compute_metrics(ds.qrels, to_run(ds, hits))["ndcg@10"], 2)
        record(
            work,
            "m3-eval",
            {
                "ndcg10": scores,
                "candidates": args.m3_candidates,
                "eval_seconds": round(time.perf_counter() - t, 1),
            },
        )

    if "reranker" in stages:
        t = time.perf_counter()
        cfg = RerankerTrainConfig(
            epochs=args.reranker_epochs,
            batch_size=args.batch_size,
            group_size=args.group_size,
            learning_rate=args.reranker_lr,
            max_length=args.reranker_max_length,
            overwrite=True,
            logging_steps=5,
            progress=False,
        )
        res = train_reranker(base, load_train_data(mined), work / "reranker", cfg)
        train_s = time.perf_counter() - t
        report = evaluate_retrieval(
            load_beir(DATA, "test"),
            Embedder.from_pretrained(base),
            RetrievalEvalConfig(
                mode="dense", rerank_top=args.reranker_top, progress=False, cache_dir=work / "cache"
            ),
            reranker=Reranker.from_pretrained(str(work / "reranker"), max_length=args.reranker_max_length),
        )
        assert report.rerank is not None
        record(
            work,
            "reranker",
            {
                "settings": {
                    k: getattr(cfg, k)
                    for k in ("epochs", "batch_size", "group_size", "learning_rate", "max_length")
                },
                "steps": res.steps,
                "train_seconds": round(train_s, 1),
                "total_seconds": round(time.perf_counter() - t, 1),
                "ndcg10_first_stage": round(100 * report.metrics["ndcg@10"], 2),
                "ndcg10_reranked": round(100 * report.rerank["metrics"]["ndcg@10"], 2),
                "top": args.reranker_top,
            },
        )


if __name__ == "__main__":
    main()
