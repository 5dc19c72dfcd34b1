"""A cross-encoder fine-tuned on SciFact, reranking a fine-tuned bi-encoder's top 100.

    python benchmarks/finetune_scifact.py --work W --stages mine,dense      # the bi-encoder
    python benchmarks/finetune_scifact_ce.py --work W --stages candidates
    python benchmarks/finetune_scifact_ce.py --work W --stages ce --tag T [options]

Stages (files in --work):
  candidates  the fine-tuned bi-encoder (--first, default W/dense) retrieves the top 100 of
              the whole corpus for every train and test query (W/candidates.json)
  ce          fine-tune a cross-encoder (--init: "base" = the packaged all-MiniLM-L6-v2,
              "dense" = the fine-tuned bi-encoder, or a folder) on the train queries, less
              --heldout of them: positives from the qrels, hard negatives from the
              bi-encoder's ranks --negatives (positives skipped), optionally the
              bi-encoder's scores as teacher (--teacher, softened by --teacher-temperature);
              then score the top --depth of the test queries and of the held-out train
              queries and report nDCG@10 of
                - the bi-encoder alone,
                - the cross-encoder's order alone,
                - fusion (bgekit's --rerank-weight w): w * z(cross-encoder) + (1 - w) *
                  z(bi-encoder) over each query's top --depth (z: per-query
                  standardisation), w picked on the held-out train queries only (the
                  test queries never choose anything).
Each run appends {tag: ...} to W/results.json; the cross-encoder is kept in W/ce-TAG.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from finetune_scifact import record  # noqa: E402

from bgekit import EngineConfig, Reranker  # noqa: E402
from bgekit.eval import compute_metrics, load_beir  # noqa: E402
from bgekit.eval.data import RetrievalDataset  # noqa: E402
from bgekit.models.packaged import packaged_model_dir  # noqa: E402
from bgekit.retrieval import Corpus, search  # noqa: E402
from bgekit.retrieval.rerank import fuse_stages  # noqa: E402
from bgekit.train import RerankerTrainConfig, TrainExample, train_reranker  # noqa: E402

DATA = ROOT / "data" / "scifact"
WEIGHTS = [round(0.05 * i, 2) for i in range(21)]
Candidates = dict[str, list[tuple[str, float]]]  # query id -> [(doc id, bi-encoder score)] best first


def retrieve(first: str, datasets: list[RetrievalDataset], k: int) -> dict[str, Candidates]:
    from bgekit import Embedder

    emb = Embedder.from_pretrained(first)
    docs = datasets[0].docs
    corpus = Corpus.from_encoded(emb.encode(docs))
    out: dict[str, Candidates] = {}
    for ds in datasets:
        assert ds.doc_ids == datasets[0].doc_ids
        hits = search(corpus, emb.encode(ds.queries, kind="query"), k, mode="dense")
        out[ds.split] = {
            qid: [
                (ds.doc_ids[i], float(s)) for i, s in zip(h.indices.tolist(), h.scores.tolist(), strict=True)
            ]
            for qid, h in zip(ds.query_ids, hits, strict=True)
        }
    return out


def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> float:
    return round(100 * compute_metrics(qrels, run)["ndcg@10"], 2)


def fused_run(
    cands: Candidates, ce: dict[str, np.ndarray], depth: int, w: float
) -> dict[str, dict[str, float]]:
    """Each query's top ``depth`` ordered by bgekit's fused score (what ``--rerank-weight w``
    gives), the rest below in bi-encoder order."""
    run = {}
    for qid, hits in cands.items():
        head = hits[:depth]
        bi = np.array([s for _, s in head], np.float64)
        fused = fuse_stages(ce[qid], bi, w)
        floor = float(fused.min()) if len(head) else 0.0
        scores = {d: float(f) for (d, _), f in zip(head, fused, strict=True)}
        scores |= {d: floor - 1 - i for i, (d, _) in enumerate(hits[depth:])}
        run[qid] = scores
    return run


def examples_for(
    ds: RetrievalDataset, cands: Candidates, qids: list[str], neg_range: tuple[int, int], teacher: bool
) -> list[TrainExample]:
    text = dict(zip(ds.doc_ids, ds.docs, strict=True))
    query = dict(zip(ds.query_ids, ds.queries, strict=True))
    out = []
    for qid in qids:
        pos_ids = [d for d, r in ds.qrels[qid].items() if r > 0]
        bi = dict(cands[qid])
        negs = [(d, s) for d, s in cands[qid][neg_range[0] : neg_range[1]] if d not in pos_ids]
        if not pos_ids or not negs:
            continue
        # a positive outside the bi-encoder's top 100 gets the lowest retrieved score as teacher
        lowest = min(bi.values())
        out.append(
            TrainExample(
                query[qid],
                tuple(text[d] for d in pos_ids),
                tuple(text[d] for d, _ in negs),
                pos_scores=tuple(bi.get(d, lowest) for d in pos_ids) if teacher else None,
                neg_scores=tuple(s for _, s in negs) if teacher else None,
            )
        )
    return out


def score_candidates(
    rr: Reranker, ds: RetrievalDataset, cands: Candidates, qids: list[str], depth: int
) -> dict[str, np.ndarray]:
    text = dict(zip(ds.doc_ids, ds.docs, strict=True))
    query = dict(zip(ds.query_ids, ds.queries, strict=True))
    pairs = [(query[q], text[d]) for q in qids for d, _ in cands[q][:depth]]
    scores = rr.score(pairs)
    out, pos = {}, 0
    for q in qids:
        n = len(cands[q][:depth])
        out[q] = scores[pos : pos + n]
        pos += n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--stages", default="candidates,ce")
    ap.add_argument("--first", default=None, help="the fine-tuned bi-encoder (default WORK/dense)")
    ap.add_argument("--tag", default="ce")
    ap.add_argument("--init", default="dense", help="base | dense | a model folder")
    ap.add_argument("--negatives", default="3:50", help="bi-encoder ranks the negatives come from")
    ap.add_argument("--teacher", action="store_true", help="bi-encoder scores as teacher")
    ap.add_argument("--teacher-temperature", type=float, default=0.05)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=256, help="tokens per pair in training")
    ap.add_argument("--score-max-length", type=int, default=256, help="tokens per pair in reranking")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--depth", type=int, default=100, help="rerank depth")
    ap.add_argument("--heldout", type=int, default=100, help="train queries kept out to choose w")
    args = ap.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    first = args.first or str(work / "dense")
    train_ds, test_ds = load_beir(DATA, "train"), load_beir(DATA, "test")
    cand_file = work / "candidates.json"

    if "candidates" in stages:
        t = time.perf_counter()
        cand_file.write_text(json.dumps(retrieve(first, [train_ds, test_ds], 100)))
        print(f"candidates: {time.perf_counter() - t:.1f} s", flush=True)

    if "ce" in stages:
        cands = {
            split: {q: [(d, s) for d, s in v] for q, v in c.items()}
            for split, c in json.loads(cand_file.read_text()).items()
        }
        qids = sorted(train_ds.query_ids)
        random.Random(0).shuffle(qids)
        heldout, fit = qids[: args.heldout], qids[args.heldout :]
        lo, hi = (int(x) for x in args.negatives.split(":"))
        examples = examples_for(train_ds, cands["train"], fit, (lo, hi), args.teacher)
        init = {"base": str(packaged_model_dir()), "dense": first}.get(args.init, args.init)
        cfg = RerankerTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            group_size=args.group_size,
            learning_rate=args.lr,
            max_length=args.max_length,
            precision=args.precision,
            teacher_temperature=args.teacher_temperature,
            overwrite=True,
            logging_steps=5,
            progress=False,
        )
        t = time.perf_counter()
        res = train_reranker(init, examples, work / f"ce-{args.tag}", cfg)
        train_s = time.perf_counter() - t
        rr = Reranker.from_pretrained(
            str(work / f"ce-{args.tag}"),
            max_length=args.score_max_length,
            engine=EngineConfig(progress=False),
        )
        t = time.perf_counter()
        held_scores = score_candidates(rr, train_ds, cands["train"], heldout, args.depth)
        test_scores = score_candidates(rr, test_ds, cands["test"], test_ds.query_ids, args.depth)
        score_s = time.perf_counter() - t
        held_c = {q: cands["train"][q] for q in heldout}
        held_q = {q: train_ds.qrels[q] for q in heldout}
        held = {w: ndcg10(held_q, fused_run(held_c, held_scores, args.depth, w)) for w in WEIGHTS}
        test = {
            w: ndcg10(test_ds.qrels, fused_run(cands["test"], test_scores, args.depth, w)) for w in WEIGHTS
        }
        best_w = max(WEIGHTS, key=lambda w: (held[w], -w))
        record(
            work,
            args.tag,
            {
                "settings": vars(args) | {"work": str(work)},
                "train_queries": len(examples),
                "steps": res.steps,
                "final_loss": res.final_loss,
                "train_minutes": round(train_s / 60, 1),
                "score_minutes": round(score_s / 60, 1),
                "pairs_scored": sum(len(v) for v in held_scores.values())
                + sum(len(v) for v in test_scores.values()),
                "test_ndcg10_bi_encoder": test[0.0],
                "test_ndcg10_cross_encoder_alone": test[1.0],
                "heldout_ndcg10_by_w": held,
                "w_chosen_on_heldout": best_w,
                "test_ndcg10_fused": test[best_w],
                "gain_over_bi_encoder": round(test[best_w] - test[0.0], 2),
                "test_ndcg10_by_w (for reading only)": test,
            },
        )


if __name__ == "__main__":
    main()
