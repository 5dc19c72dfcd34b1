"""Starting `bgekit serve` for a benchmark: a free loopback port, the subprocess, and a wait
until /ready answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    options: Sequence[str], python: str = sys.executable
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``bgekit serve OPTIONS --port P`` until the block ends: yields the process and its URL."""
    import httpx

    port = free_port()
    cmd = [python, "-m", "bgekit.cli.main", "serve", *options, "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}")
            time.sleep(0.2)
        else:
            raise SystemExit("server did not become ready")
        yield server, url
    finally:
        server.terminate()
        server.wait(30)
