"""``bgekit eval retrieval`` and ``bgekit eval sts``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from bgekit.cli.common import (
    embedder_settings,
    engine_args,
    engine_config,
    hybrid_config,
    long_input_args,
    long_passage_args,
    model_path,
    rerank_args,
    search_args,
)
from bgekit.io import atomic_write
from bgekit.scoring.quantize import DENSE_DTYPES


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with atomic_write(Path(path)) as f:
            f.write((json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def _table(rows: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(rows.values())))
    head = "| stage | " + " | ".join(names) + " |"
    sep = "|---" * (len(names) + 1) + "|"
    body = [
        f"| {stage} | " + " | ".join(f"{100 * m[n]:.2f}" for n in names) + " |" for stage, m in rows.items()
    ]
    return "\n".join([head, sep, *body])


def cmd_retrieval(ns: argparse.Namespace) -> int:
    from bgekit.eval import RetrievalEvalConfig, evaluate_retrieval, load_beir
    from bgekit.eval.metrics import require_metrics
    from bgekit.models import Embedder, Reranker

    require_metrics()  # before the data is read or a model loaded
    dataset = load_beir(ns.data_dir, ns.split)
    config = RetrievalEvalConfig(
        mode=ns.mode,
        k=ns.k,
        hybrid=hybrid_config(ns),
        rerank_top=ns.rerank_top,
        rerank_weight=ns.rerank_weight,
        cache_dir=Path(ns.cache_dir) if ns.cache_dir else None,
        progress=not ns.no_progress,
    )
    engine = engine_config(ns)
    settings = dataclasses.replace(embedder_settings(ns), text_model=ns.text_model)
    embedder = (
        None
        if ns.mode == "bm25"
        else Embedder.from_pretrained(model_path(ns.model), settings=settings, engine=engine)
    )
    reranker = (
        Reranker.from_pretrained(
            ns.reranker,
            engine=engine,
            max_length=ns.rerank_max_length,
            long_passage=ns.long_passage,
            passage_overlap=ns.passage_overlap,
        )
        if ns.reranker
        else None
    )
    report = evaluate_retrieval(
        dataset, embedder, config, reranker=reranker, run_file=Path(ns.run) if ns.run else None
    )
    print(f"{report.dataset} ({report.split}): {report.num_queries} queries, {report.num_docs} documents")
    print(f"model: {report.model}, mode: {report.mode}, {report.seconds:.1f}s\n")
    rows = {"retrieval": report.metrics}
    if report.rerank:
        weight = report.rerank["weight"]
        label = f"rerank top {report.rerank['top']}" + (f" (weight {weight:g})" if weight != 1.0 else "")
        rows[label] = report.rerank["metrics"]
    print(_table(rows))
    print("\n(metrics x 100, from pytrec_eval)")
    _write_json(ns.output, report.to_dict())
    return 0


def cmd_sts(ns: argparse.Namespace) -> int:
    from bgekit.eval import evaluate_sts, load_sts
    from bgekit.models import Embedder

    dataset = load_sts(ns.file)
    embedder = Embedder.from_pretrained(
        model_path(ns.model), settings=embedder_settings(ns), engine=engine_config(ns)
    )
    report = evaluate_sts(dataset, embedder)
    print(f"{report.dataset}: {report.num_pairs} pairs, model {report.model}, {report.seconds:.1f}s")
    print(
        f"cosine Spearman {100 * report.metrics['spearman']:.2f}, Pearson {100 * report.metrics['pearson']:.2f}"
    )
    _write_json(ns.output, report.to_dict())
    return 0


def cmd_suite(ns: argparse.Namespace) -> int:
    from bgekit.eval.metrics import require_metrics
    from bgekit.eval.suite_run import SuiteRunConfig, evaluate_suite
    from bgekit.models import Embedder, Reranker

    require_metrics()  # before any data is read or a model loaded
    modes = tuple(m.strip() for m in ns.modes.split(",") if m.strip())
    config = SuiteRunConfig(
        split=ns.split,
        subsets=tuple(x.strip() for x in (ns.subsets or "").split(",") if x.strip()),
        modes=modes,
        k_values=tuple(int(k) for k in ns.k_values.split(",")) if ns.k_values else (),
        hybrid=hybrid_config(ns),
        rerank_top=ns.rerank_top,
        cache_dir=Path(ns.cache_dir) if ns.cache_dir else None,
        overwrite=ns.overwrite,
        progress=not ns.no_progress,
        download=ns.download,
        dense_dtype=ns.dense_dtype,
    )
    engine = engine_config(ns)
    embedder = None
    if modes != ("bm25",):
        embedder = Embedder.from_pretrained(
            model_path(ns.model), settings=embedder_settings(ns), engine=engine
        )
    reranker = Reranker.from_pretrained(ns.reranker, engine=engine) if ns.reranker else None
    result = evaluate_suite(ns.suite, ns.data_dir, embedder, ns.output, config, reranker=reranker)
    from bgekit.eval.report import markdown_table

    print(markdown_table(result))
    print(
        f"results in {ns.output}/<mode>/{result.model}/ (the reference's layout); report: {ns.output}/report.html"
    )
    return 0


def cmd_mteb(ns: argparse.Namespace) -> int:
    from bgekit.eval.mteb_run import evaluate_mteb, mteb_tasks
    from bgekit.models import Embedder

    names = [t.strip() for t in (ns.tasks or "").split(",") if t.strip()]
    types = [t.strip() for t in (ns.task_types or "").split(",") if t.strip()]
    tasks = mteb_tasks(ns.benchmark, names, types)  # checked before the model loads
    embedder = Embedder.from_pretrained(
        model_path(ns.model), settings=embedder_settings(ns), engine=engine_config(ns)
    )
    from bgekit.eval.report import markdown_table

    result = evaluate_mteb(embedder, tasks, ns.output, name=ns.benchmark or "mteb")
    print(markdown_table(result))
    print(
        f"summary: {ns.output}/summary.json; mteb's results: {ns.output}/mteb-results; report: {ns.output}/report.html"
    )
    return 0


def register(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate on BEIR-layout retrieval data or STS pairs")
    evsub = ev.add_subparsers(dest="eval_command", required=True)

    p = evsub.add_parser(
        "retrieval", help="retrieval metrics (nDCG, Recall, MRR, MAP) on a BEIR-layout folder"
    )
    p.add_argument(
        "data_dir",
        help="folder with corpus.jsonl, queries.jsonl, qrels/<split>.tsv (records may name an "
        '"image" file, relative to their JSONL file: evaluated in dense mode with an image model)',
    )
    p.add_argument("--model", help="hub id or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument(
        "--text-model",
        help="for a BGE-Visualized checkpoint (.pth) whose name does not tell it: the text model it was "
        "trained on (hub id or folder)",
    )
    p.add_argument("--split", default="test", help="the qrels split to score (qrels/SPLIT.tsv)")
    search_args(p, default_mode="dense")
    p.add_argument("-k", type=int, default=1000, help="hits kept per query")
    rerank_args(p)
    p.add_argument("--output", help="write the report as JSON")
    p.add_argument("--run", help="write the final run in TREC format")
    p.add_argument("--cache-dir", help="reuse encodings saved here (per model, dataset and outputs)")
    long_input_args(p)
    long_passage_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_retrieval)

    from bgekit.eval.suites import SUITES

    for name, suite in SUITES.items():
        p = evsub.add_parser(
            name,
            aliases=["air-bench"] if name == "airbench" else [],
            help=f"{name.upper()} in the reference's layout ({len(suite.subsets)} "
            f"{'datasets' if name in ('msmarco', 'bright') else 'languages'}; metrics by its rules)",
        )
        p.add_argument(
            "data_dir",
            help="the suite's folder: <subset>/corpus.jsonl, <subset>/<split>_queries.jsonl, "
            "<subset>/<split>_qrels.jsonl"
            + (" (one corpus.jsonl at the top)" if suite.shared_corpus else ""),
        )
        p.add_argument("--model", help="hub id or local folder (default: the packaged all-MiniLM-L6-v2)")
        p.add_argument(
            "--split", default=suite.default_split, choices=suite.splits, help="the split to score"
        )
        p.add_argument(
            "--subsets",
            help=f"comma-separated {'datasets' if name in ('msmarco', 'bright') else 'languages'} "
            f"(default: those DATA_DIR holds, or all with --download; the suite has: {','.join(suite.subsets)})",
        )
        p.add_argument(
            "--modes",
            default="dense",
            help="comma-separated first-stage modes, each run and reported: dense, sparse, multivector, hybrid, bm25",
        )
        p.add_argument(
            "--k-values",
            help=f"comma-separated cut-offs (default: {','.join(map(str, suite.k_values))})",
        )
        search_args(p, default_mode=None, mode=False)
        p.add_argument("--reranker", help="a reranker for the second stage (hub id or folder)")
        p.add_argument("--rerank-top", type=int, default=100, help="first-stage hits the reranker rescores")
        p.add_argument("--output", default="search_results", help="where results and the report go")
        p.add_argument("--cache-dir", help="reuse encodings saved here (per model identity)")
        p.add_argument("--overwrite", action="store_true", help="search again subsets with results on disk")
        p.add_argument(
            "--dense-dtype",
            choices=DENSE_DTYPES,
            default="float32",
            help="hold the corpus's dense vectors as this while searching (a large corpus in 1/2, 1/4 or "
            "1/32 of the memory; binary rescores its candidates with int8)",
        )
        p.add_argument(
            "--download",
            action="store_true",
            help=f"fetch missing subsets into DATA_DIR from the hub datasets the reference reads ({suite.source})",
        )
        long_input_args(p)
        engine_args(p)
        p.set_defaults(func=cmd_suite, suite=name)

    p = evsub.add_parser("mteb", help="MTEB / C-MTEB task lists through mteb (its data from the hub cache)")
    p.add_argument("--benchmark", help="an mteb benchmark name: C-MTEB (MTEB(cmn, v1)), MTEB(eng, v2), ...")
    p.add_argument("--tasks", help="comma-separated task names (of the benchmark, or on their own)")
    p.add_argument(
        "--task-types", help="keep these task types: Retrieval, Reranking, STS, Classification, ..."
    )
    p.add_argument("--model", help="hub id or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument(
        "--output", default="mteb_results", help="where mteb's results, the summary and the report go"
    )
    long_input_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_mteb)

    p = evsub.add_parser("sts", help="Spearman / Pearson of cosine similarity on an STS file")
    p.add_argument("file", help="STS Benchmark .csv (tab-separated), a 3-column TSV, or JSONL")
    p.add_argument("--model", help="hub id or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--output", help="write the report as JSON")
    long_input_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_sts)
