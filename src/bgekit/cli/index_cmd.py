"""``bgekit index build|add|info`` and ``bgekit search``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from bgekit.cli.common import (
    chunk_args,
    chunk_options,
    encoding_arg,
    engine_args,
    engine_config,
    hybrid_config,
    long_passage_args,
    model_path,
    outputs_arg,
    rerank_args,
    search_args,
    task_arg,
)
from bgekit.errors import InputError
from bgekit.images import Composed, ImageInput, Item
from bgekit.retrieval.dense_store import DEFAULT_RESCORE
from bgekit.scoring.quantize import DENSE_DTYPES
from bgekit.types import SearchMode

logger = logging.getLogger("bgekit.cli")
R = TypeVar("R")


def plural(n: int, word: str) -> str:
    """``1 document``, ``2 documents``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _skipped(report: Any) -> str:
    out = f"; {report.skipped} with no text skipped" if report.skipped else ""
    if report.oversized:
        out += f"; {report.oversized} over the size limit skipped"
    return out


def cmd_build(ns: argparse.Namespace) -> int:
    from bgekit.index import IndexConfig, build_index, read_source
    from bgekit.index.build import check_buildable
    from bgekit.models import Embedder, EmbedderSettings

    root = Path(ns.index)
    check_buildable(root, ns.overwrite)  # before the source is read or the model loads
    if (ns.source is None) == (ns.from_encoded is None):
        raise InputError("give either a source to index or --from-encoded SHARDS (not both)")
    if ns.from_encoded is not None:
        return _build_from_encoded(ns, root)
    config = IndexConfig(  # checked before anything is read or loaded
        outputs=ns.outputs or ("dense",),
        dense_index=ns.dense_index,
        dense_dtype=ns.dense_dtype,
        rescore=ns.rescore,
        **chunk_options(ns),
    )
    docs = read_source(ns.source, source_options(ns))
    settings = EmbedderSettings(text_model=ns.text_model)
    embedder = Embedder.from_pretrained(model_path(ns.model), settings=settings, engine=engine_config(ns))
    start = time.perf_counter()
    index, report = build_index(
        root,
        docs,
        embedder,
        config,
        overwrite=ns.overwrite,
        wait=ns.wait,
        checkpoint_seconds=ns.checkpoint_seconds,
    )
    resumed = f"; {report.resumed:,} already there from the interrupted build" if report.resumed else ""
    print(
        f"indexed {plural(report.documents, 'document')} ({plural(report.chunks, 'chunk')}{_skipped(report)}{resumed}) "
        f"in {time.perf_counter() - start:.1f}s -> {root}; now {plural(len(index), 'document')}"
    )
    return 0


def _build_from_encoded(ns: argparse.Namespace, root: Path) -> int:
    """An index from the shards of ``bgekit encode --ray``: with ``--as-index``, their chunks
    (the chunk settings and task are the shards'; one given here must agree), else each record
    one chunk."""
    from bgekit.distributed.load import check_chunking, load_shards
    from bgekit.distributed.shards import read_header
    from bgekit.index import Index, IndexConfig
    from bgekit.models import Embedder

    start = time.perf_counter()
    header = read_header(ns.from_encoded)  # checked before the model loads
    given = chunk_options(ns)
    if header.chunking is None and given:
        option = "--" + next(iter(given)).replace("_", "-")
        raise InputError(
            f"{ns.from_encoded} holds one row per record (encoded without --as-index), so {option} "
            "cannot apply: encode with --ray --as-index to chunk"
        )
    chunking = {} if header.chunking is None else header.chunking.to_dict()
    config = IndexConfig(
        outputs=ns.outputs or header.outputs,
        dense_index=ns.dense_index,
        dense_dtype=ns.dense_dtype,
        rescore=ns.rescore,
        **(chunking | given),
    )
    check_chunking(header, config, ns.from_encoded)
    embedder = Embedder.from_pretrained(model_path(ns.model), engine=engine_config(ns))
    index = Index(embedder, config)
    report = load_shards(index, ns.from_encoded)
    index.save(root, wait=ns.wait, exist_ok=ns.overwrite)
    rows = f"{report.chunks} chunks" if header.chunking else "one chunk each: encoded without --as-index"
    print(
        f"indexed {report.documents} documents ({rows}) from {ns.from_encoded}{_skipped(report)} in "
        f"{time.perf_counter() - start:.1f}s (no encoding) -> {root}"
    )
    return 0


def _edit_from_source(ns: argparse.Namespace, change: Callable[[Any, list[Any]], R]) -> tuple[R, int, float]:
    """Read ``ns.source`` (after checking the index exists) and apply ``change(index, docs)``
    under the index's writer lock: its result, the documents after, and the seconds taken."""
    from bgekit.index import Index, read_source
    from bgekit.index.storage import read_manifest

    read_manifest(Path(ns.index))  # no index there: said before the source is read
    docs = read_source(ns.source, source_options(ns))
    start = time.perf_counter()
    with Index.edit(ns.index, wait=ns.wait, engine=engine_config(ns), model=ns.model) as index:
        result = change(index, docs)
    return result, len(index), time.perf_counter() - start


def cmd_add(ns: argparse.Namespace) -> int:
    report, now, seconds = _edit_from_source(ns, lambda index, docs: index.add(docs, update=ns.update))
    new = report.documents - report.replaced
    changed = f"added {plural(new, 'document')}" + (
        f", replaced {report.replaced:,}" if report.replaced else ""
    )
    print(
        f"{changed} ({plural(report.chunks, 'chunk')}{_skipped(report)}) in {seconds:.1f}s; "
        f"now {plural(now, 'document')}"
    )
    return 0


def cmd_sync(ns: argparse.Namespace) -> int:
    r, now, seconds = _edit_from_source(ns, lambda index, docs: index.sync(docs))
    print(
        f"synced {ns.index} with {ns.source}: {r.added:,} added, {r.updated:,} updated, {r.unchanged:,} unchanged, "
        f"{r.removed:,} removed ({plural(r.chunks, 'chunk')} encoded{_skipped(r)}) in "
        f"{seconds:.1f}s; now {plural(now, 'document')}"
    )
    return 0


def cmd_delete(ns: argparse.Namespace) -> int:
    from bgekit.index import Index

    ids = list(dict.fromkeys(ns.ids))
    with Index.edit(ns.index, wait=ns.wait, load_model=False) as index:  # deleting needs no model
        chunks = index.delete(ids)
    print(
        f"deleted {plural(len(ids), 'document')} ({plural(chunks, 'chunk')}); now {plural(len(index), 'document')}"
    )
    return 0


def cmd_info(ns: argparse.Namespace) -> int:
    from bgekit.index import Index

    info = Index.inspect(ns.index)
    if ns.json:
        print(json.dumps(asdict(info), indent=2))
        return 0
    total = sum(info.disk_bytes.values())
    print(f"index      {info.path}")
    if info.building:
        print("state      an interrupted build: run the same 'bgekit index build' again to finish it")
    print(f"model      {info.model}")
    dims = ", ".join(f"{k} {v}" for k, v in info.dims.items()) or "-"
    print(f"outputs    {', '.join(info.outputs)}  (dimensions: {dims})")
    print(f"documents  {info.documents:,}  chunks {info.chunks:,}")
    print(
        f"config     chunk_tokens={info.config['chunk_tokens']} overlap={info.config['chunk_overlap']} dense={info.config['dense_index']} {info.config.get('dense_dtype', 'float32')}"
    )
    print(
        f"disk       {total / 1e6:.1f} MB: "
        + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in info.disk_bytes.items())
    )
    return 0


# Control characters (C0, DEL, C1) shown as escapes: a document's text must not be able to
# drive the terminal (clear it, set its title, hide or fake lines) when hits are printed.
_VISIBLE = {c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)]}


def visible(text: str) -> str:
    """``text`` with its control characters written as ``\\xNN``."""
    return text.translate(_VISIBLE)


def _hit_dict(h: Any) -> dict[str, Any]:
    return {
        "id": h.id,
        "score": h.score,
        "title": h.title,
        "chunk": h.chunk,
        "text": h.text,
        "scores": h.scores,
        "metadata": h.metadata,
        **({"image": h.image} if h.image is not None else {}),
    }


# A query longer than this is cut in the results' header (the whole query is searched).
SHOWN_QUERY_CHARS = 200


def _shown_query(ns: argparse.Namespace) -> str:
    query = ns.query
    if len(query) > SHOWN_QUERY_CHARS:
        query = f"{query[:SHOWN_QUERY_CHARS]}... ({len(query):,} characters)"
    text = f'"{visible(query)}"' if ns.query.strip() else ""
    image = f"image {visible(ns.image)}" if ns.image else ""
    return " + ".join(x for x in (image, text) if x)


def cmd_search(ns: argparse.Namespace) -> int:
    from bgekit.index import Index
    from bgekit.models import Reranker
    from bgekit.retrieval import Filter, Pipeline

    query: Item = ns.query or ""
    if ns.image is not None:
        image = ImageInput.of(Path(ns.image))
        query = Composed(ns.query, image) if ns.query.strip() else image
    elif not ns.query.strip():
        raise InputError("the query is empty (give a text, an --image, or both)")
    if ns.k < 1:
        raise InputError(f"-k must be at least 1, got {ns.k}")
    mode: SearchMode = ns.mode or ("dense" if ns.image is not None else "hybrid")
    where = Filter.parse(ns.where or None)  # checked before the model loads
    index = Index.load(ns.index, engine=engine_config(ns), model=ns.model)
    if index.building:
        logger.warning(
            "%s holds an interrupted build (%d documents so far): run the same build again to finish it",
            ns.index,
            len(index),
        )
    hybrid = hybrid_config(ns)
    reranker = (
        Reranker.from_pretrained(
            ns.reranker,
            engine=engine_config(ns),
            max_length=ns.rerank_max_length,
            long_passage=ns.long_passage,
            passage_overlap=ns.passage_overlap,
        )
        if ns.reranker
        else None
    )
    pipe = Pipeline(
        None,
        index,
        reranker,
        retrieve=ns.rerank_top,
        mode=mode,
        hybrid=hybrid,
        rerank_weight=ns.rerank_weight,
    )
    start = time.perf_counter()
    hits = pipe.search([query], ns.k, where=where)[0]
    seconds = time.perf_counter() - start
    if ns.json:
        print(
            json.dumps(
                {
                    "query": ns.query,
                    **({"image": ns.image} if ns.image else {}),
                    "mode": mode,
                    "seconds": seconds,
                    "hits": [_hit_dict(h) for h in hits],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    print(
        f"{len(hits)} results for {_shown_query(ns)} ({mode}{', reranked' if reranker else ''}, {1000 * seconds:.0f} ms)\n"
    )
    for rank, h in enumerate(hits, start=1):
        detail = ", ".join(f"{k} {v:.3f}" for k, v in h.scores.items() if k != "retrieval" or reranker)
        print(f"{rank:>2}. [{visible(h.id)}] {visible(h.title or '')}".rstrip())
        print(f"    score {h.score:.4f} ({detail})")
        if h.image is not None:
            print(f"    image: {visible(h.image)}")
        text = " ".join(h.text.split())
        print(f"    {visible(text[:300])}{'...' if len(text) > 300 else ''}\n")
    return 0


def source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the source")
    encoding_arg(g)  # type: ignore[arg-type]
    g.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="read only a folder's files whose path inside it matches (e.g. '*.md', 'docs/*'; repeat for more)",
    )
    g.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="leave out a folder's files that match (repeatable)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        help="stop at a folder's file that cannot be read (default: skip it and count it in a warning)",
    )
    g.add_argument("--text-field", default="text", help="a table's text column")
    g.add_argument("--id-field", help="a table's id column (default: id, else _id)")
    g.add_argument("--title-field", default="title", help="a table's title column")


def source_options(ns: argparse.Namespace) -> Any:
    from bgekit.index import SourceOptions

    return SourceOptions(
        encoding=ns.encoding,
        include=tuple(ns.include or ()),
        exclude=tuple(ns.exclude or ()),
        strict=ns.strict,
        text_field=ns.text_field,
        id_field=ns.id_field,
        title_field=ns.title_field,
    )


def moved_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="where the index's model is now (hub id or folder), when its recorded folder has moved; "
        "it must be the same model (checked)",
    )


def wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="while another process writes the index, wait at most this long (0: fail at once; "
        "default: wait until it is done)",
    )


def register(sub: Any) -> None:
    ix = sub.add_parser("index", help="build, extend and inspect an embedded search index")
    ixsub = ix.add_subparsers(dest="index_command", required=True)
    source_help = (
        "a folder of text (.txt .md .rst), HTML, PDF and image files (images: image models), one such "
        "file, or a table: .jsonl with id/_id, text[, title, metadata, image: a path relative to the "
        "file, its text the caption], .csv or .parquet (other columns: metadata)"
    )

    p = ixsub.add_parser("build", help="index a folder of text files and images, one file or a JSONL file")
    p.add_argument("source", nargs="?", help=source_help)
    p.add_argument("--index", required=True, help="folder to write the index to")
    p.add_argument(
        "--from-encoded",
        metavar="SHARDS",
        help="build from the shard folder of 'bgekit encode --ray' instead of a source (no encoding): "
        "shards of --as-index hold the chunks a direct build makes; others, one chunk per record",
    )
    p.add_argument("--model", help="hub id or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument(
        "--text-model",
        help="for a BGE-Visualized checkpoint (.pth) whose name does not tell it: the text model it was "
        "trained on (hub id or folder)",
    )
    p.add_argument(
        "--outputs",
        type=outputs_arg,
        default=None,
        help="dense[,sparse][,multivector] (default: dense; with --from-encoded, the shards' outputs)",
    )
    p.add_argument(
        "--dense-index", choices=["flat", "hnsw"], default="flat", help="exact, or approximate (HNSW)"
    )
    p.add_argument(
        "--dense-dtype",
        choices=DENSE_DTYPES,
        default="float32",
        help="dense storage: float16 (1/2 the bytes), calibrated int8 (1/4), or binary (1/32 in memory; "
        "Hamming candidates rescored with int8 codes read from disk)",
    )
    p.add_argument(
        "--rescore",
        type=int,
        default=DEFAULT_RESCORE,
        help="binary: Hamming-nearest candidates rescored per query",
    )
    chunk_args(p, note="; with --from-encoded, the shards'")
    task_arg(p, note="; with --from-encoded, the shards'")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an index already in --index (or start an interrupted build over)",
    )
    p.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=60.0,
        help="save the build this often, so that running it again after an interruption resumes it",
    )
    wait_arg(p)
    source_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_build)

    p = ixsub.add_parser("add", help="add documents to an index (its model is loaded from the index)")
    p.add_argument("source", help=source_help)
    p.add_argument("--index", required=True, help="the index folder")
    p.add_argument("--update", action="store_true", help="replace documents whose id is already indexed")
    moved_model_arg(p)
    wait_arg(p)
    source_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_add)

    p = ixsub.add_parser(
        "sync",
        help="make the index hold exactly the source's documents: new ones added, changed ones "
        "encoded again, unchanged ones left alone (not encoded), the others removed",
    )
    p.add_argument("source", help=source_help)
    p.add_argument("--index", required=True, help="the index folder")
    moved_model_arg(p)
    wait_arg(p)
    source_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_sync)

    p = ixsub.add_parser("delete", help="delete documents (all their chunks) by id")
    p.add_argument("ids", nargs="+", help="document ids")
    p.add_argument("--index", required=True, help="the index folder")
    wait_arg(p)
    p.set_defaults(func=cmd_delete)

    p = ixsub.add_parser("info", help="counts, model, outputs and sizes on disk (every file checked)")
    p.add_argument("index", help="the index folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("search", help="search an index (optionally rerank)")
    p.add_argument("index", help="the index folder")
    p.add_argument("query", nargs="?", default="", help="what to search for (with --image: the text with it)")
    p.add_argument(
        "--image", metavar="PATH", help="search by this image (with a query text: by both; image models)"
    )
    p.add_argument("-k", type=int, default=10, help="documents to show")
    search_args(
        p,
        default_mode=None,
        mode_help="default: hybrid for a text query; dense for an --image query (only the model sees the image)",
    )
    p.add_argument(
        "--where",
        action="append",
        metavar="CONDITION",
        help="only documents whose metadata passes: field=value, !=, <, <=, >, >= (numbers, dates, text), "
        "'field in a,b', field^=prefix; repeat to require several (id and title name the document's own)",
    )
    rerank_args(p)
    moved_model_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    long_passage_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_search)
