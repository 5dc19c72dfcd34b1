"""Soak test of `bgekit serve` on loopback: is memory flat under load, and do keyed clients
keep being served while hostile connections are held?

    python benchmarks/server_soak.py [--rounds 10] [--clients 256] [--requests 2] [--slow 500]
                                     [--index DIR]

A `bgekit serve` subprocess with the packaged model and an API key (and `--index` for
/search). One warm-up round, then --rounds rounds; in each, --clients keyed clients at once
each send --requests requests drawn at random (fixed seed): /v1/embeddings (float or
base64) and /encode with 1-16 SciFact texts cut to 1-150 words, and /search when an index is
given. All the while --slow connections without a key send headers and part of a body and
then stall (reopened when the server closes them). After each round (and --settle
seconds): the server's RSS and its anonymous part (heap and private memory, not mapped
files), keyed requests, errors (anything but 200; a 413 for a text over the model's limit
is the right answer and counted apart), p50 / p99 latency, and how many stalled
connections the server closed. Prints a table and the RSS spread over the measured rounds
(goal: within +-10%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEY = "soak-key"


def abstracts() -> list[str]:
    with (ROOT / "data" / "scifact" / "corpus.jsonl").open() as f:
        return [json.loads(line)["text"] for line in f]


def rss_mib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss / 2**20)


def anon_mib(pid: int) -> float:
    """The anonymous part of the RSS (``RssAnon``: heap and other private memory), Linux only."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(float(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return float("nan")


def request(rng: random.Random, docs: list[str], search: bool) -> tuple[str, dict[str, object]]:
    texts = [" ".join(rng.choice(docs).split()[: rng.randint(1, 150)]) for _ in range(rng.randint(1, 16))]
    kind = rng.choice(
        ["openai-float", "openai-base64", "embed", "search"]
        if search
        else ["openai-float", "openai-base64", "embed"]
    )
    if kind == "search":
        return "/search", {"query": texts[0][:200], "k": rng.randint(1, 20)}
    if kind == "embed":
        return "/encode", {"inputs": texts, "kind": rng.choice(["query", "document"])}
    return "/v1/embeddings", {"input": texts, "encoding_format": kind.split("-")[1]}


class Stallers:
    """Connections without a key that send headers and part of a body, then stall."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.closed_by_server = 0
        self._stop = asyncio.Event()

    async def _one(self) -> None:
        head = (
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                writer.write(head + b'{"input": "')
                await writer.drain()
                stop = asyncio.ensure_future(self._stop.wait())
                eof = asyncio.ensure_future(reader.read())  # returns when the server closes
                done, _ = await asyncio.wait({stop, eof}, return_when=asyncio.FIRST_COMPLETED)
                if eof in done:
                    self.closed_by_server += 1
                    await asyncio.sleep(0.01)
                for t in (stop, eof):
                    t.cancel()
            except OSError:
                self.closed_by_server += 1
            finally:
                writer.close()

    async def run(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.n)))

    def stop(self) -> None:
        self._stop.set()


async def round_(
    url: str, clients: int, per_client: int, rng: random.Random, docs: list[str], search: bool
) -> dict[str, float]:
    import httpx

    plan = [[request(rng, docs, search) for _ in range(per_client)] for _ in range(clients)]
    latencies: list[float] = []
    errors: list[str] = []
    too_long: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300, headers=headers) as client:

        async def worker(todo: list[tuple[str, dict[str, object]]]) -> None:
            for path, body in todo:
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    if r.status_code == 413 and "longer than" in r.text:
                        too_long.append(path)  # the right answer to a text over the model's limit
                    elif r.status_code != 200:
                        errors.append(f"{path} {r.status_code} {r.text[:100]}")
                except httpx.HTTPError as e:
                    errors.append(f"{path} {type(e).__name__}")
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker(todo) for todo in plan))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "too_long_413": len(too_long),
        "error_kinds": sorted({e[:60] for e in errors})[:5],
        "wall_s": wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


async def soak(args: argparse.Namespace, url: str, port: int, pid: int) -> list[dict[str, object]]:
    docs = abstracts()
    rng = random.Random(0)
    stallers = Stallers(port, args.slow)
    held = asyncio.ensure_future(stallers.run())
    await asyncio.sleep(2)
    rows: list[dict[str, object]] = []
    for r in range(args.rounds + 1):
        closed = stallers.closed_by_server
        row: dict[str, object] = {"round": "warm-up" if r == 0 else r}
        row |= await round_(url, args.clients, args.requests, rng, docs, args.index is not None)
        await asyncio.sleep(args.settle)  # RSS of the idle server, not of the last batch
        row["rss_mib"] = rss_mib(pid)
        row["anon_mib"] = anon_mib(pid)
        row["stalled_closed"] = stallers.closed_by_server - closed
        rows.append(row)
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    stallers.stop()
    await held
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--slow", type=int, default=500, help="stalled connections without a key")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after a round before RSS is read")
    ap.add_argument("--index", default=None, help="an index built with the packaged model, for /search")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bgekit.models.packaged import packaged_model_dir
    from live_server import serve

    options = [
        "--model",
        str(packaged_model_dir()),
        "--api-key",
        KEY,
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    options += ["--index", args.index] if args.index else []
    with serve(options) as (server, url):
        port = int(url.rsplit(":", 1)[1])
        start_rss = rss_mib(server.pid)
        rows = asyncio.run(soak(args, url, port, server.pid))
    measured = [float(r["rss_mib"]) for r in rows[1:]]  # type: ignore[arg-type]
    mean = float(np.mean(measured))
    print(f"\nserver RSS {start_rss:.0f} MiB ready; after warm-up {rows[0]['rss_mib']:.0f} MiB")
    print(
        f"measured rounds: mean {mean:.0f} MiB, min {min(measured):.0f} ({100 * (min(measured) / mean - 1):+.1f}%), "
        f"max {max(measured):.0f} ({100 * (max(measured) / mean - 1):+.1f}%), "
        f"last vs first {100 * (measured[-1] / measured[0] - 1):+.1f}%"
    )
    print(
        "\n| round | keyed requests | errors | 413 too long | p50 ms | p99 ms | stalled conns closed by server | RSS MiB | of it anonymous |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['round']} | {r['requests']} | {r['errors']} | {r['too_long_413']} | {float(r['p50_ms']):.0f} | {float(r['p99_ms']):.0f} | "  # type: ignore[arg-type]
            f"{r['stalled_closed']} | {float(r['rss_mib']):.0f} | {float(r['anon_mib']):.0f} |"  # type: ignore[arg-type]
        )


if __name__ == "__main__":
    main()
