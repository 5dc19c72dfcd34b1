"""How soon a running server serves another process's change to its index, and whether any
request fails during the switch (issue 22).

Builds an index of SciFact abstracts with the packaged model, starts ``bgekit serve --index``
as its own process, keeps ``--clients`` threads searching it, then ``--changes`` times runs
``bgekit index add`` (a new document with a unique word) or ``bgekit index delete`` as
another process and measures the time from that command's exit (the change acknowledged)
to the first search answer that shows it.

    python benchmarks/index_reload.py --docs 500 --changes 10 --clients 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bgekit.cli.main", *args], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--poll", type=float, default=1.0, help="the server's --index-poll")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bgekit-reload-"))
    corpus = work / "corpus.jsonl"
    with (ROOT / "data/scifact/corpus.jsonl").open() as src, corpus.open("w") as out:
        for _, line in zip(range(args.docs), src, strict=False):
            out.write(line)
    index = work / "idx"
    _cli("index", "build", str(corpus), "--index", str(index))
    port = _port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bgekit.cli.main",
            "serve",
            "--index",
            str(index),
            "--port",
            str(port),
            "--index-poll",
            str(args.poll),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    statuses: Counter[int] = Counter()
    stop = threading.Event()
    lock = threading.Lock()
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)

        def client() -> None:
            with httpx.Client(timeout=120) as c:
                while not stop.is_set():
                    try:
                        code = c.post(
                            f"{url}/search", json={"query": "vitamin d and bone fractures", "k": 10}
                        ).status_code
                    except httpx.TransportError:
                        code = -1
                    with lock:
                        statuses[code] += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        latencies = []
        probe = httpx.Client(timeout=120)
        for n in range(args.changes):
            word = f"zq{n}xkcdmarker"
            if n % 2 == 0:
                doc = work / f"add{n}.jsonl"
                doc.write_text(
                    json.dumps({"id": f"new{n}", "text": f"{word} a new study of bone health"}) + "\n"
                )
                _cli("index", "add", str(doc), "--index", str(index))
                ack = time.monotonic()

                def shown(n: int = n, word: str = word) -> bool:
                    hits = probe.post(f"{url}/search", json={"query": word, "k": 3, "mode": "bm25"}).json()[
                        "hits"
                    ]
                    return any(h["id"] == f"new{n}" for h in hits)
            else:
                _cli("index", "delete", f"new{n - 1}", "--index", str(index))
                ack = time.monotonic()
                prev = f"zq{n - 1}xkcdmarker"

                def shown(n: int = n, prev: str = prev) -> bool:
                    hits = probe.post(f"{url}/search", json={"query": prev, "k": 3, "mode": "bm25"}).json()[
                        "hits"
                    ]
                    return all(h["id"] != f"new{n - 1}" for h in hits)

            while not shown():
                time.sleep(0.02)
            latencies.append(time.monotonic() - ack)
            print(
                f"change {n + 1} ({'add' if n % 2 == 0 else 'delete'}): served after {latencies[-1]:.2f}s",
                flush=True,
            )
        stop.set()
        for t in threads:
            t.join()
        info = probe.get(f"{url}/info").json()["index"]
        print(f"cpu: {_cpu()}")
        print(
            f"{args.changes} changes, poll {args.poll}s: served after p50 {statistics.median(latencies):.2f}s, "
            f"max {max(latencies):.2f}s; {sum(statuses.values())} searches by {args.clients} clients meanwhile, "
            f"statuses {dict(statuses)}; now serving {info['generation']} ({info['documents']} documents)"
        )
    finally:
        server.terminate()
        server.wait(timeout=60)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f", {os.cpu_count()} CPUs"
    return "unknown"


if __name__ == "__main__":
    main()
