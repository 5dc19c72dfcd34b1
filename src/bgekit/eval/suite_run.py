"""Running a benchmark suite (:mod:`bgekit.eval.suites`): every subset, every first-stage
mode, an optional reranker; search results and metrics in the reference's files (one
reference output folder per mode), then the report (:mod:`bgekit.eval.report`).

A subset whose search results are already on disk is scored from them, not searched again
(as the reference does), so an interrupted run resumes where it stopped; encodings are
cached per model identity with ``cache_dir``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from bgekit.errors import InputError
from bgekit.eval.report import SuiteScores, write_report
from bgekit.eval.retrieval import RetrievalEvalConfig, first_stage, rerank_stage, to_run
from bgekit.eval.suites import (
    Suite,
    SuiteData,
    answer_recall,
    load_subset,
    reference_metrics,
    search_results_file,
    suite,
    without_excluded,
    write_eval_results,
    write_search_results,
)
from bgekit.models import Embedder, Reranker
from bgekit.retrieval import HybridConfig, check_mode
from bgekit.retrieval.dense_store import check_dense_dtype
from bgekit.scoring.quantize import DenseDtype
from bgekit.types import SearchMode

logger = logging.getLogger(__name__)

# Hits kept per query, as the reference's search_top_k.
SEARCH_TOP_K = 1000


@dataclass(frozen=True, kw_only=True)
class SuiteRunConfig:
    """``split`` (default: the suite's), ``subsets`` (languages or datasets; default: those
    the data folder holds),
    first-stage ``modes`` (each with ``hybrid``'s weights for ``hybrid``), ``k_values``
    (default: the suite's), the reranker's ``rerank_top``; ``overwrite`` searches again
    subsets that have results on disk."""

    split: str | None = None
    subsets: tuple[str, ...] = ()
    modes: tuple[SearchMode, ...] = ("dense",)
    k_values: tuple[int, ...] = ()
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    rerank_top: int = 100
    cache_dir: Path | None = None
    overwrite: bool = False
    progress: bool = False
    download: bool = False  # fetch missing subsets from the hub (bgekit.eval.suite_download)
    dense_dtype: DenseDtype = "float32"  # float16 / int8 / binary: a large corpus in less memory

    def __post_init__(self) -> None:
        for m in self.modes:
            check_mode(m)
        if not self.modes:
            raise InputError("give at least one mode")
        if any(k < 1 for k in self.k_values) or self.rerank_top < 1:
            raise InputError("k values and rerank_top must be at least 1")
        check_dense_dtype(self.dense_dtype)


def _name(path_or_id: str) -> str:
    return PurePath(path_or_id.rstrip("/\\")).name


def model_name(embedder: Embedder) -> str:
    """The name results are filed under, as the reference files them (the folder's or hub
    id's last part); the packaged model by its own name, not its folder's ("model")."""
    from bgekit.index.model_record import model_source

    if model_source(embedder.info.name, embedder.info.path) == {"kind": "packaged"}:
        return "all-MiniLM-L6-v2"
    return _name(embedder.info.name)


def evaluate_suite(
    name: str,
    data_dir: str | Path,
    embedder: Embedder | None,
    output_dir: str | Path,
    config: SuiteRunConfig | None = None,
    *,
    reranker: Reranker | None = None,
) -> SuiteScores:
    """Evaluate ``embedder`` (``None``: BM25 alone) on suite ``name`` read from ``data_dir``;
    results under ``output_dir/<mode>/<model>/<NoReranker | reranker>/`` in the reference's
    layout, and ``output_dir/report.{md,html,png}``."""
    from bgekit.eval.metrics import require_metrics

    require_metrics()
    s = suite(name)
    cfg = config or SuiteRunConfig()
    split = cfg.split or s.default_split
    # default: the subsets the folder holds (a local copy is often a few languages), or all
    # of them when downloading
    held = tuple(x for x in s.subsets if (Path(data_dir) / x).is_dir())
    subsets = cfg.subsets or (s.subsets if cfg.download else held)
    if not subsets:
        raise InputError(
            f"{data_dir} holds none of {s.name}'s {', '.join(s.subsets)} folders (each with corpus.jsonl, "
            f"<split>_queries.jsonl and <split>_qrels.jsonl; the reference downloads them from {s.source})"
        )
    unknown = [x for x in subsets if x not in s.subsets]
    if unknown:
        raise InputError(f"{s.name} has no {', '.join(unknown)}; it has: {', '.join(s.subsets)}")
    if split not in s.splits:
        raise InputError(f"{s.name} has no split {split!r}; it has: {', '.join(s.splits)}")
    ks = cfg.k_values or s.k_values
    out = Path(output_dir)
    model = model_name(embedder) if embedder is not None else "bm25"
    ranker = _name(reranker.info.name) if reranker is not None else None
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for subset in subsets:
        if cfg.download:
            from bgekit.eval.suite_download import download

            download(s, data_dir, subset, split)
        data = load_subset(s, data_dir, subset, split)  # a missing file is said before any encoding
        for mode in cfg.modes:
            start = time.perf_counter()
            stages = _search(s, data, embedder, reranker, cfg, mode, out / mode, model, ranker, subset, split)
            for label, (folder, run) in stages.items():
                metrics = _score(s, data, run, ks)
                write_eval_results(folder, {f"{subset}-{split}": metrics})
                scores.setdefault(label, {})[subset] = metrics
                headline = s.headline if s.headline in metrics else next(iter(metrics))
                logger.info(
                    "%s %s %s %s: %s %.4f (%d queries, %.1fs)",
                    s.name, subset, split, label, headline, metrics[headline],
                    len(data.dataset.query_ids), time.perf_counter() - start,
                )  # fmt: skip
    first = next((m for per in scores.values() for m in per.values()), {})
    headline = s.headline if s.headline in first else next(iter(first), s.headline)
    result = SuiteScores(s.name, split, model, headline, scores)
    write_report(result, out)
    return result


def _search(
    s: Suite,
    data: SuiteData,
    embedder: Embedder | None,
    reranker: Reranker | None,
    cfg: SuiteRunConfig,
    mode: SearchMode,
    folder: Path,
    model: str,
    ranker: str | None,
    subset: str,
    split: str,
) -> dict[str, tuple[Path, dict[str, dict[str, float]]]]:
    """Each stage's run (first stage, and reranked when there is a reranker), searched now
    or read back from its search-results file; keyed by the report's run label."""
    first_file = search_results_file(folder, model, None, subset, split, s.result_layout)
    second_file = (
        search_results_file(folder, model, ranker, subset, split, s.result_layout) if ranker else None
    )
    files = [f for f in (first_file, second_file) if f is not None]
    if not cfg.overwrite and all(f.is_file() for f in files):
        runs = [_read_run(f) for f in files]
    else:
        ev = RetrievalEvalConfig(
            mode=mode,
            k=SEARCH_TOP_K,
            hybrid=cfg.hybrid,
            cache_dir=cfg.cache_dir,
            progress=cfg.progress,
            dense_dtype=cfg.dense_dtype,
        )
        hits = first_stage(data.dataset, embedder, ev, {})
        runs = [to_run(data.dataset, hits)]
        if reranker is not None:
            runs.append(to_run(data.dataset, rerank_stage(data.dataset, hits, reranker, cfg.rerank_top)))
        for f, run, who in zip(files, runs, (None, ranker), strict=False):
            write_search_results(
                f, eval_name=s.name, model=model, reranker=who, subset=subset, split=split, run=run
            )
    labels = [mode] + ([f"{mode}+rerank"] if reranker is not None else [])
    homes = [folder / model / (who or "NoReranker") for who in (None, ranker)]  # where EVAL/ goes
    return {label: (home, run) for label, home, run in zip(labels, homes, runs, strict=False)}


def _read_run(path: Path) -> dict[str, dict[str, float]]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(q): {str(d): float(v) for d, v in docs.items()} for q, docs in body["search_results"].items()
        }
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise InputError(f"{path}: unreadable search results ({e}); run again with --overwrite") from None


def _score(
    s: Suite, data: SuiteData, run: dict[str, dict[str, float]], ks: tuple[int, ...]
) -> dict[str, float]:
    if data.answers is not None:
        passages = dict(zip(data.dataset.doc_ids, data.dataset.docs, strict=True))
        return answer_recall(data.answers, run, passages, ks)
    if s.exclude_zero:
        run = without_excluded(run, data.dataset.qrels)
    return reference_metrics(data.dataset.qrels, run, ks)
