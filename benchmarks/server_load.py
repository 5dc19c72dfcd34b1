"""Load test of `bgekit serve` on loopback vs calling the library directly, same machine, same run.

    python benchmarks/server_load.py [--texts 1000] [--clients 1,8,64] [--max-seconds 120]

Texts: the first --texts SciFact abstracts cut to their first 64 words (about 90 tokens).
Library: one `Embedder.encode` call over all texts (the offline throughput).
Server: a `bgekit serve` subprocess with the packaged model; each request embeds one text
through POST /v1/embeddings (float output); C clients keep one request each in flight
until every text was sent (bounded by --max-seconds per level). Reports throughput,
client-side p50/p99 latency, errors, and the server's resident memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from live_server import serve  # noqa: E402


def texts(n: int) -> list[str]:
    out = []
    with (ROOT / "data" / "scifact" / "corpus.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            out.append(" ".join(f"{doc['title']} {doc['text']}".split()[:64]))
            if len(out) == n:
                break
    return out


def model_seconds(url: str) -> float:
    """Time the server's embedder has spent in model runs so far (from /metrics)."""
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith('bgekit_batch_seconds_sum{model="embedder"}'):
            return float(line.split()[-1])
    return 0.0


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def level(
    url: str, items: list[str], clients: int, max_seconds: float, per_request: int
) -> dict[str, float]:
    import httpx

    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for i in range(0, len(items), per_request):
        queue.put_nowait(items[i : i + per_request])
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                try:
                    text = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"input": text, "encoding_format": "float"})
                    ok = r.status_code == 200 and len(r.json()["data"]) == len(text)
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "texts_per_s": min(len(items), len(latencies) * per_request) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--gather-tokens", type=int, default=16384, help="the server's --gather-tokens")
    ap.add_argument(
        "--texts-per-request", default="1", help="comma-separated; each value is a separate series"
    )
    args = ap.parse_args()

    import torch

    from bgekit import Embedder, EngineConfig
    from bgekit.models.packaged import packaged_model_dir

    items = texts(args.texts)
    model = str(packaged_model_dir())
    print(f"torch threads {torch.get_num_threads()}, {len(items)} texts, model {model}", flush=True)

    emb = Embedder.from_pretrained(model, engine=EngineConfig(progress=False))
    emb.encode(items[:32])
    t0 = time.perf_counter()
    enc = emb.encode(items)
    lib_s = time.perf_counter() - t0
    tokens = sum(len(s) for s in emb.tokenize(items))
    lib_rate = len(items) / lib_s
    print(f"library: {lib_rate:.1f} texts/s ({tokens / lib_s:.0f} tokens/s) in {lib_s:.1f}s", flush=True)
    del emb, enc

    os.environ["BGEKIT_LOG_LEVEL"] = "warning"
    options = ["--model", model, "--gather-tokens", str(args.gather_tokens), "--device", "cpu"]
    with serve(options) as (server, url):
        before = rss_mib(server.pid)
        rows = []
        series = [
            (int(p), int(c)) for p in args.texts_per_request.split(",") for c in args.clients.split(",")
        ]
        for per, c in series:
            busy = model_seconds(url)
            t0 = time.perf_counter()
            row = asyncio.run(level(url, items, c, args.max_seconds, per))
            row["texts_per_request"] = per
            row["model_busy"] = (model_seconds(url) - busy) / (time.perf_counter() - t0)
            row["vs_library"] = row["texts_per_s"] / lib_rate
            rows.append(row)
            print(
                json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
        after = rss_mib(server.pid)
    print(f"\nserver RSS: {before:.0f} MiB after warm-up, {after:.0f} MiB after the load test\n")
    print(
        "| texts/request | clients | requests | errors | texts/s | p50 ms | p99 ms | model busy | vs library offline |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['texts_per_request']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['texts_per_s']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {100 * r['model_busy']:.0f}% | {100 * r['vs_library']:.0f}% |"
        )
    print(f"| library, one encode call | | | 0 | {lib_rate:.1f} | - | - | 100% | 100% |")


if __name__ == "__main__":
    main()
