"""Retrieval evaluation on a BEIR-layout dataset: first stage in any mode, optional rerank."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bgekit.errors import InputError
from bgekit.eval.cache import cache_key, cached_encode
from bgekit.eval.data import RetrievalDataset
from bgekit.eval.metrics import compute_metrics, require_metrics
from bgekit.io import atomic_write
from bgekit.models import Embedder, Reranker, model_fingerprint
from bgekit.retrieval import Corpus, HybridConfig, SearchPlan, available_scorers, check_mode, search
from bgekit.retrieval.dense_store import check_dense_dtype
from bgekit.retrieval.rerank import check_rerank_weight, rerank_rankings
from bgekit.scoring.quantize import DenseDtype
from bgekit.types import MODALITY_LABELS, Encoded, Ranking, SearchMode

Run = dict[str, dict[str, float]]


@dataclass(frozen=True, kw_only=True)
class RetrievalEvalConfig:
    """``k`` hits per query are kept (1000: enough for Recall@1000). ``hybrid`` holds the
    weights, candidate count and fusion for ``hybrid`` and ``multivector`` modes (the same
    search core and defaults as the index: :func:`bgekit.retrieval.search`). ``task`` picks
    the instructions of both sides from the model's task table (``None``: its default).
    ``rerank_weight``: the reranker's share when its scores are fused with the first
    stage's (:func:`bgekit.retrieval.rerank.fuse_stages`; 1, the default: the reranker
    alone)."""

    mode: SearchMode = "dense"
    k: int = 1000
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    rerank_top: int = 100
    rerank_weight: float = 1.0
    cache_dir: Path | None = None
    progress: bool = True
    task: str | None = None
    dense_dtype: DenseDtype = "float32"  # how the corpus's dense vectors are held while searching

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_dense_dtype(self.dense_dtype)
        if self.k < 1 or self.rerank_top < 1:
            raise InputError("k and rerank_top must be at least 1")
        check_rerank_weight(self.rerank_weight)


@dataclass(frozen=True)
class RetrievalReport:
    """Metrics are fractions in [0, 1]; ``rerank`` holds the second stage when one ran."""

    metrics: dict[str, float]
    model: str
    mode: str
    dataset: str
    split: str
    num_queries: int
    num_docs: int
    seconds: float
    timings: dict[str, float]
    settings: dict[str, Any]
    rerank: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_run(dataset: RetrievalDataset, rankings: list[Ranking]) -> Run:
    """``{query id: {doc id: score}}`` for pytrec_eval."""
    ids = dataset.doc_ids
    return {
        qid: {ids[i]: float(s) for i, s in zip(r.indices.tolist(), r.scores.tolist(), strict=True)}
        for qid, r in zip(dataset.query_ids, rankings, strict=True)
    }


def check_images(dataset: RetrievalDataset, embedder: Embedder | None, cfg: RetrievalEvalConfig) -> None:
    """A dataset with images needs dense search by a model that reads what it holds;
    refused here in one line, before anything is encoded."""
    if not dataset.has_images:
        return
    if cfg.mode != "dense":
        raise InputError(
            f"{dataset.name} holds images: evaluate it in dense mode (the {cfg.mode} mode scores "
            "text tokens, which an image has none of)"
        )
    assert embedder is not None  # dense mode: first_stage has checked
    takes = set(embedder.info.modalities)
    if "image" not in takes:
        raise InputError(
            f"{dataset.name} holds images, but {embedder.info.name} reads text only; "
            "evaluate it with an image model (BGE-Visualized, BGE-VL)"
        )
    missing = sorted(dataset.modalities - takes)
    if missing:
        kinds = ", ".join(MODALITY_LABELS.get(m, m) for m in missing)
        raise InputError(f"{dataset.name} holds {kinds} inputs, which {embedder.info.name} does not take")


def first_stage(
    dataset: RetrievalDataset, embedder: Embedder | None, cfg: RetrievalEvalConfig, timings: dict[str, float]
) -> list[Ranking]:
    """Encode what the mode needs (cached per model, dataset and outputs) and search.
    Queries are encoded first: a bad query image fails before the (larger) corpus runs."""
    if embedder is None and cfg.mode != "bm25":
        raise InputError(f"mode {cfg.mode} needs a model")
    check_images(dataset, embedder, cfg)
    heads = embedder.info.heads if embedder is not None else ()
    plan = SearchPlan.make(cfg.mode, available_scorers(heads, texts=True), cfg.hybrid)
    outputs = plan.outputs
    docs = queries = Encoded()
    start = time.perf_counter()
    if outputs:
        assert embedder is not None
        embedder.prompts.pick(cfg.task)  # an unknown task fails before anything is encoded
        model, fp = model_fingerprint(embedder), dataset.fingerprint
        queries = cached_encode(
            cfg.cache_dir,
            cache_key(model, dataset.name, fp, f"queries-{dataset.split}", outputs, cfg.task),
            f"{dataset.name}-{dataset.split}-queries",
            lambda: embedder.encode(dataset.query_items(), kind="query", outputs=outputs, task=cfg.task),
        )
        timings["encode_queries"] = time.perf_counter() - start
        start = time.perf_counter()
        docs = cached_encode(
            cfg.cache_dir,
            cache_key(model, dataset.name, fp, "corpus", outputs, cfg.task),
            f"{dataset.name}-corpus",
            lambda: embedder.encode(dataset.doc_items(), kind="document", outputs=outputs, task=cfg.task),
        )
        timings["encode_corpus"] = time.perf_counter() - start
        start = time.perf_counter()
    corpus = Corpus.from_encoded(docs, texts=dataset.docs, dense_dtype=cfg.dense_dtype)
    hits = search(corpus, queries, cfg.k, texts=dataset.queries, progress=cfg.progress, plan=plan)
    timings["search"] = time.perf_counter() - start
    return hits


def rerank_stage(
    dataset: RetrievalDataset, hits: list[Ranking], reranker: Reranker, top: int, weight: float = 1.0
) -> list[Ranking]:
    """The ``top`` first-stage hits rescored by ``reranker``, fused with the first stage's
    scores when ``weight`` < 1 (see :func:`bgekit.retrieval.rerank.rerank_rankings`: the
    rest follow in first-stage order)."""
    return rerank_rankings(reranker, dataset.queries, hits, lambda qi, d: dataset.docs[d], top, weight=weight)


def write_trec_run(path: Path, run: Run, name: str) -> None:
    """TREC run format: ``qid Q0 docid rank score name``, best first; written atomically."""
    lines = []
    for qid, docs in run.items():
        for rank, (did, score) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), start=1):
            lines.append(f"{qid} Q0 {did} {rank} {score:.6f} {name}\n")
    with atomic_write(path) as f:
        f.write("".join(lines).encode())


def evaluate_retrieval(
    dataset: RetrievalDataset,
    embedder: Embedder | None,
    config: RetrievalEvalConfig | None = None,
    *,
    reranker: Reranker | None = None,
    run_file: Path | None = None,
) -> RetrievalReport:
    """Retrieve ``k`` hits per query, score them with pytrec_eval, optionally rerank."""
    require_metrics()
    cfg = config or RetrievalEvalConfig()
    if reranker is not None and dataset.has_images:
        raise InputError(f"a reranker reads text, and {dataset.name} holds images; evaluate it without one")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    hits = first_stage(dataset, embedder, cfg, timings)
    run = to_run(dataset, hits)
    metrics = compute_metrics(dataset.qrels, run)
    rerank = None
    final_run = run
    if reranker is not None:
        t = time.perf_counter()
        reranked = rerank_stage(dataset, hits, reranker, cfg.rerank_top, cfg.rerank_weight)
        timings["rerank"] = time.perf_counter() - t
        final_run = to_run(dataset, reranked)
        rerank = {
            "model": reranker.info.name,
            "top": cfg.rerank_top,
            "weight": cfg.rerank_weight,
            "metrics": compute_metrics(dataset.qrels, final_run),
        }
    if run_file is not None:
        write_trec_run(run_file, final_run, f"bgekit-{cfg.mode}")
    settings: dict[str, Any] = {"k": cfg.k}
    if cfg.mode in ("hybrid", "multivector"):
        settings |= {
            "weights": list(cfg.hybrid.weights),
            "candidates": cfg.hybrid.candidates,
            "fusion": cfg.hybrid.fusion,
            "scorers": sorted({m for r in hits[:1] for m in r.modes}),
        }
    if embedder is not None and cfg.mode != "bm25":
        settings |= {
            "query_instruction": embedder.info.query_instruction,
            "query_max_length": embedder.info.query_max_length,
            "passage_max_length": embedder.info.passage_max_length,
            "pooling": embedder.info.pooling,
        }
    return RetrievalReport(
        metrics=metrics,
        model="bm25s" if cfg.mode == "bm25" or embedder is None else embedder.info.name,
        mode=cfg.mode,
        dataset=dataset.name,
        split=dataset.split,
        num_queries=len(dataset.query_ids),
        num_docs=len(dataset.doc_ids),
        seconds=time.perf_counter() - start,
        timings=timings,
        settings=settings,
        rerank=rerank,
    )
