"""Distributed encoding on Ray against the one-process encode, same machine, same run; and
the per-document sizes the scaling plan (docs/SCALING.md) builds on.

    python benchmarks/ray_encode.py --work DIR [--docs 5183] [--dtype auto] [--model FOLDER]

SciFact's corpus (title + abstract, the first ``--docs`` records) with the packaged
all-MiniLM-L6-v2: (1) ``Embedder.encode`` in this process with 2 torch threads; (2)
``bgekit.distributed.encode_on_ray`` on a local Ray cluster of this machine's CPUs, as one
replica with 2 torch threads (1.9 CPU slots) and as 2 replicas with 1 thread each (0.9
slots each; the read tasks take 0.1 of a slot), 1,024 records a shard. Ray's start-up is outside
the timing; each Ray run includes loading the model in its actors (as a real run does)
and writing the Parquet shards. Outputs are checked equal to the one-process vectors (max
abs difference).

Also printed: SciFact's tokens per document (the model's tokenizer, before truncation) and
distinct tokens per document (a sparse vector's entries), and the shards' bytes per record.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--docs", type=int, default=5183)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default=None)
    ns = ap.parse_args()
    import ray
    import torch

    from bgekit import Embedder, EngineConfig
    from bgekit.distributed import RayEncodeConfig, encode_on_ray, read_shards
    from bgekit.models.packaged import packaged_model_dir

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from encode_throughput import cpu_line

    cpu, flags = cpu_line()
    print(f"cpu: {cpu}; flags: {', '.join(flags)}; ray {ray.__version__}; torch {torch.__version__}")
    model = ns.model or str(packaged_model_dir())
    ns.work.mkdir(parents=True, exist_ok=True)
    src = ns.work / "corpus.jsonl"
    rows = []
    with (ROOT / "data/scifact/corpus.jsonl").open(encoding="utf-8") as f:
        for line in itertools.islice(f, ns.docs):
            r = json.loads(line)
            rows.append({"_id": r["_id"], "title": r["title"], "text": r["text"]})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    texts = [f"{r['title']} {r['text']}".strip() for r in rows]
    engine = EngineConfig(dtype=ns.dtype, progress=False)  # type: ignore[arg-type]

    torch.set_num_threads(2)
    emb = Embedder.from_pretrained(model, engine=engine)
    token_ids = emb.tokenizer.ids(texts)
    lengths = [len(t) for t in token_ids]
    distinct = [len(set(t)) for t in token_ids]
    emb.encode(texts[:64])  # warm-up
    start = time.perf_counter()
    ref = emb.encode(texts).dense
    one = time.perf_counter() - start
    assert ref is not None
    room = emb.info.passage_max_length - emb.tokenizer.n_special
    kept_tokens = sum(min(n, room) + emb.tokenizer.n_special for n in lengths)
    print(f"\n{len(texts)} documents, {emb.info.name}, dtype {ns.dtype} ({emb.compute()[0]})")
    print(
        f"tokens per document: mean {np.mean(lengths):.0f}, median {np.median(lengths):.0f}, "
        f"max {max(lengths)}; distinct tokens per document: mean {np.mean(distinct):.0f}; "
        f"tokens encoded (truncated at {emb.info.passage_max_length}): {kept_tokens:,}"
    )
    del emb
    by_id = {r["_id"]: ref[i] for i, r in enumerate(rows)}
    print("\n| runner | seconds | documents/s | tokens/s | vs one process | max abs diff |")
    print("|---|---|---|---|---|---|")
    rate = len(texts) / one
    print(
        f"| one process, 2 threads | {one:.1f} | {rate:.1f} | {kept_tokens / one:,.0f} | 1.00x | - |",
        flush=True,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    # one replica with 2 torch threads, or two with one each (read tasks take 0.1 of a slot)
    for replicas, cpus, threads in ((1, 1.9, 2), (2, 0.9, 1)):
        out = ns.work / f"shards-{replicas}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = RayEncodeConfig(
            model=model, engine=engine, replicas=replicas, cpus_per_replica=cpus, shard_rows=1024
        )
        assert max(1, round(cpus)) == threads
        start = time.perf_counter()
        report = encode_on_ray(str(src), out, cfg)
        took = time.perf_counter() - start
        got = read_shards(out)
        assert got.encoded.dense is not None and report.rows == len(texts)
        diff = max(float(np.abs(got.encoded.dense[j] - by_id[i]).max()) for j, i in enumerate(got.ids))
        size = sum(p.stat().st_size for p in out.glob("shard-*.parquet"))
        print(
            f"| Ray, {replicas} replica(s) x {threads} thread(s) | {took:.1f} | {len(texts) / took:.1f} "
            f"| {kept_tokens / took:,.0f} | {one / took:.2f}x | {diff:.1e} |",
            flush=True,
        )
        print(f"  shards: {report.shards}, {size / len(texts):,.0f} bytes per record (dense + title + text)")
    ray.shutdown()


if __name__ == "__main__":
    main()
