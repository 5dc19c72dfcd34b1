"""``bgekit`` commands: encode, info, similarity."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from bgekit.cli.common import (
    Parser,
    chunk_args,
    chunk_options,
    embedder_settings,
    encoding_arg,
    engine_args,
    engine_config,
    long_input_args,
    model_path,
    outputs_arg,
    run_parser,
)
from bgekit.cli.eval_cmd import register as register_eval
from bgekit.cli.index_cmd import register as register_index
from bgekit.cli.serve_cmd import register as register_serve
from bgekit.cli.train_cmd import register as register_train
from bgekit.errors import InputError


def cmd_encode_ray(ns: argparse.Namespace) -> int:
    from bgekit.distributed import RayEncodeConfig, encode_on_ray
    from bgekit.index import IndexConfig

    given = chunk_options(ns, task=False)
    if given and not ns.as_index:
        option = "--" + next(iter(given)).replace("_", "-")
        raise InputError(f"{option} chunks documents for an index: give it with --as-index")
    settings = embedder_settings(ns)
    index_config = None
    if ns.as_index:  # the task is the index's, as with index build (the model keeps its default)
        index_config = IndexConfig(**chunk_options(ns))
        settings = dataclasses.replace(settings, task=None)
    config = RayEncodeConfig(
        model=model_path(ns.model),
        outputs=ns.outputs,
        kind=ns.kind,
        settings=settings,
        engine=engine_config(ns),
        replicas=ns.replicas,
        cpus_per_replica=ns.cpus_per_replica,
        gpus_per_replica=ns.gpus_per_replica,
        shard_rows=ns.shard_rows,
        keep_text=not ns.no_text,
        input_format=ns.input_format,
        address=ns.ray or None,
        index_config=index_config,
    )
    report = encode_on_ray(ns.input, ns.output, config)
    resumed = f"; {report.resumed_rows} already there (resumed)" if report.resumed_rows else ""
    left = [f"{report.empty} with no text", f"{report.oversized} over the size limit"]
    left = [w for w, n in zip(left, (report.empty, report.oversized), strict=True) if n]
    skipped = f" ({', '.join(left)} skipped)" if left else ""
    chunks = f" as {report.chunks} chunks" if ns.as_index else ""
    print(
        f"encoded {report.new_rows} records into {report.new_shards} shards in {report.seconds:.1f}s"
        f"{skipped}{resumed}; {ns.output} holds {report.rows} records{chunks} in {report.shards} shards"
    )
    return 0


def cmd_encode(ns: argparse.Namespace) -> int:
    from bgekit.io import read_texts, save_encoded
    from bgekit.models import Embedder

    if ns.ray is not None:
        return cmd_encode_ray(ns)
    if ns.as_index or chunk_options(ns, task=False):
        raise InputError("--as-index and the chunk options write index rows as shards: they need --ray")

    texts, ids = read_texts(Path(ns.input), ns.encoding)
    settings = embedder_settings(ns)
    model = Embedder.from_pretrained(model_path(ns.model), settings=settings, engine=engine_config(ns))
    start = time.perf_counter()
    enc = model.encode(texts, kind=ns.kind, outputs=ns.outputs)
    seconds = time.perf_counter() - start
    meta = {"model": model.info.name, "kind": ns.kind, "outputs": list(enc.outputs), "count": len(texts)}
    save_encoded(Path(ns.output), enc, ids=ids, meta=meta)
    long = [f"{enc.truncated} truncated"] if enc.truncated else []
    long += (
        [f"{enc.chunked} {'windowed' if ns.long_input == 'chunk' else 'with several CLS'}"]
        if enc.chunked
        else []
    )
    note = f"; {', '.join(long)}" if long else ""
    print(f"encoded {len(texts)} texts ({', '.join(enc.outputs)}{note}) in {seconds:.1f}s -> {ns.output}")
    return 0


def cmd_info(ns: argparse.Namespace) -> int:
    from bgekit.models.loading import read_folder, resolve_model_dir
    from bgekit.models.registry import lookup
    from bgekit.models.reranker import reranker_variant

    name = model_path(ns.model)
    path = resolve_model_dir(name)
    meta = read_folder(path)
    known = lookup(name, str(path))
    from bgekit.engine import cpu_features
    from bgekit.models.runtime import LoadedModel

    engine = engine_config(ns)
    model: LoadedModel
    if reranker_variant(meta, known[1].reranker_variant if known else None) is not None:
        from bgekit.models import Reranker

        model = Reranker.from_pretrained(name, engine=engine)
    else:
        from bgekit.models import Embedder

        model = Embedder.from_pretrained(name, engine=engine)
    cpu = cpu_features().describe()
    if ns.json:
        from dataclasses import asdict

        out = {**asdict(model.info), "compute": model.compute(), "kernels": model.kernels(), "cpu": cpu}
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        rows = [
            *model.info.describe(),
            ("cpu", cpu),
            *(("runs on", c) for c in model.compute()),
            *(("kernels", k) for k in model.kernels()),
        ]
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_similarity(ns: argparse.Namespace) -> int:
    from bgekit.models import Embedder

    model = Embedder.from_pretrained(model_path(ns.model), engine=engine_config(ns))
    enc = model.encode(ns.texts)
    assert enc.dense is not None
    sims = enc.dense @ enc.dense.T
    print(f"model: {model.info.name} ({model.info.pooling} pooling, dim {enc.dense.shape[1]})\n")
    for i, t in enumerate(ns.texts):
        print(f"[{i}] {t}")
    print("\ncosine similarity:")
    print("     " + "".join(f"{j:>8}" for j in range(len(ns.texts))))
    for i, row in enumerate(sims):
        print(f"[{i}]  " + "".join(f"{v:8.3f}" for v in row))
    for i in range(len(ns.texts)):
        others = [(float(sims[i, j]), j) for j in range(len(ns.texts)) if j != i]
        if others:
            score, j = max(others)
            print(f"closest to [{i}]: [{j}] ({score:.3f})")
    return 0


def cmd_models(ns: argparse.Namespace) -> int:
    from bgekit.models.catalog import CATALOG, cached

    rows = [
        {
            "name": e.hub_id,
            "kind": e.kind,
            "outputs": ",".join(e.outputs),
            "dim": e.dim,
            "languages": e.languages,
            "max_length": e.max_length,
            "params": f"{e.params_m / 1000:.1f}B" if e.params_m >= 1000 else f"{e.params_m}M",
            "cached": cached(e.hub_id),
        }
        for e in CATALOG
    ]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("name", "kind", "outputs", "dim", "languages", "max_length", "params", "cached")
    table = [[str(r[h]) if r[h] is not None else "-" for h in head] for r in rows]
    for row in table:
        row[-1] = "yes" if row[-1] == "True" else "no"
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
    print("  ".join(h.replace("_", " ").ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(
        "\ncached: in this machine's hub cache (bgekit download NAME fetches one; any hub id or folder loads)"
    )
    return 0


def cmd_download(ns: argparse.Namespace) -> int:
    from bgekit.models.catalog import download

    start = time.perf_counter()
    folder = download(ns.name, ns.revision)
    print(f"{ns.name} -> {folder} ({time.perf_counter() - start:.1f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bgekit",
        description="BGE retrieval models: encode, evaluate, index, search, fine-tune, serve, inspect",
    )
    from bgekit import __version__

    parser.add_argument("--version", action="version", version=f"bgekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="encode texts into dense / sparse / multi-vector outputs (.npz)")
    p.add_argument("--model", help="hub id or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument(
        "--input",
        required=True,
        help=".jsonl (strings or objects with text[, id, title]) or .txt (a text per line; blank lines "
        "skipped, each row's id its line number)",
    )
    p.add_argument(
        "--output", required=True, help=".npz file to write (atomically); with --ray, a folder of shards"
    )
    p.add_argument(
        "--kind",
        choices=["query", "document"],
        default="document",
        help="encode as queries (with the model's query instruction) or as documents",
    )
    p.add_argument(
        "--outputs", type=outputs_arg, default=("dense",), help="comma-separated, e.g. dense,sparse"
    )
    encoding_arg(p)
    g = p.add_argument_group("distributed (Ray Data; pip install 'bgekit[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="encode on a Ray cluster (ADDRESS, e.g. auto or ray://head:10001; none: RAY_ADDRESS "
        "or a local cluster) into Parquet shards in --output; rerun to resume a killed run. "
        "--input: a JSONL / Parquet file, a folder of them, or a URI Ray reads",
    )
    g.add_argument("--replicas", type=int, default=1, help="model replicas (Ray actors)")
    g.add_argument(
        "--cpus-per-replica", type=float, default=1.0, help="CPU slots (torch threads) per replica"
    )
    g.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (1: one per GPU)")
    g.add_argument("--shard-rows", type=int, default=1024, help="records per shard")
    g.add_argument("--input-format", choices=["auto", "jsonl", "parquet"], default="auto")
    g.add_argument("--no-text", action="store_true", help="store ids and vectors only (no title/text)")
    g.add_argument(
        "--as-index",
        action="store_true",
        help="write an index's rows: documents chunked as 'bgekit index build' chunks them (the "
        "options below), one row per chunk; 'index build --from-encoded' then makes the index a "
        "direct build makes",
    )
    chunk_args(p, title="index rows (--ray --as-index)")
    long_input_args(p)
    engine_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("info", help="what a model is and how bgekit runs it")
    p.add_argument("model", nargs="?", help="hub id or local folder (default: the packaged model)")
    p.add_argument("--json", action="store_true", help="print JSON")
    engine_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("similarity", help="encode a few texts and print their cosine similarities")
    p.add_argument("texts", nargs="+", help="texts to compare")
    p.add_argument("--model", help="hub id or local folder (default: the packaged all-MiniLM-L6-v2)")
    engine_args(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser(
        "models", help="the published BGE models: kind, outputs, size, and whether cached here"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("download", help="fetch a model into the hub cache (needs the internet)")
    p.add_argument("name", help="a name from 'bgekit models' (bge-m3) or any hub id (BAAI/bge-m3)")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.set_defaults(func=cmd_download)

    register_eval(sub)
    register_index(sub)
    register_train(sub)
    register_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_parser(build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
