"""From encoded shards to an index, no encoding: the embedded index, Qdrant (local mode) and
Milvus Lite, rows per second, same machine, one run.

    python benchmarks/shard_load.py SHARDS --work DIR [--model FOLDER]

``SHARDS``: a finished folder of ``bgekit encode --ray`` (e.g. the one
``benchmarks/ray_encode.py`` leaves in ``DIR/shards-2``). Timed: reading the whole folder
(``read_shards``); the embedded index built from it (``load_shards`` into an ``Index``,
then ``save``) for float32 and binary dense storage; streaming bulk loads (one shard at a
time) into a Qdrant local-mode folder and a Milvus Lite file through the adapters. Local
modes are single-process stand-ins for the servers: their rates are not a cluster's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--model", default=None)
    ns = ap.parse_args()
    from bgekit import Embedder, EngineConfig, Index, IndexConfig
    from bgekit.distributed import read_shards
    from bgekit.distributed.load import load_shards
    from bgekit.index.adapters import MilvusBackend, QdrantBackend, VectorDBIndex
    from bgekit.models.packaged import packaged_model_dir

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from encode_throughput import cpu_line

    cpu, flags = cpu_line()
    print(f"cpu: {cpu}; flags: {', '.join(flags)}")
    ns.work.mkdir(parents=True, exist_ok=True)
    emb = Embedder.from_pretrained(ns.model or str(packaged_model_dir()), engine=EngineConfig(progress=False))
    t = time.perf_counter()
    rows = len(read_shards(ns.shards).ids)
    read = time.perf_counter() - t
    print(f"\n{rows:,} records in {ns.shards}\n")
    print("| step | seconds | records/s |")
    print("|---|---|---|")
    print(f"| read_shards (whole folder) | {read:.2f} | {rows / read:,.0f} |", flush=True)
    for dtype in ("float32", "binary"):
        out = ns.work / f"index-{dtype}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        index = Index(emb, IndexConfig(dense_dtype=dtype))  # type: ignore[arg-type]
        load_shards(index, ns.shards)
        index.save(out)
        took = time.perf_counter() - t
        print(
            f"| embedded index, {dtype} dense, built + saved | {took:.2f} | {rows / took:,.0f} |", flush=True
        )
    for name in ("qdrant", "milvus"):
        target = ns.work / name
        shutil.rmtree(target, ignore_errors=True)
        target.unlink(missing_ok=True) if target.is_file() else None
        backend = QdrantBackend(str(target)) if name == "qdrant" else MilvusBackend(str(target) + ".db")
        t = time.perf_counter()
        with VectorDBIndex(emb, backend, IndexConfig()) as vdb:
            load_shards(vdb, ns.shards, streaming=True)
        took = time.perf_counter() - t
        label = "Qdrant local mode" if name == "qdrant" else "Milvus Lite"
        print(f"| {label}, streaming bulk load | {took:.2f} | {rows / took:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
