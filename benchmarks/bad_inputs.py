"""A table of user mistakes and hostile inputs, on the command line and over HTTP, with the
message each gets. Fails if any answer is a traceback or a 5xx, or, on the command line, anything
but exit code 2 with one error line (after the command's usage, for a bad option).

    python benchmarks/bad_inputs.py

Uses the packaged model and a small index built in a temporary folder; HTTP requests go
through the app in-process (FastAPI's test client).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def cli(args: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "BGEKIT_LOG_LEVEL": "warning"}
    r = subprocess.run(
        [sys.executable, "-m", "bgekit.cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    return r.returncode, r.stderr.strip()


def main() -> None:
    rows: list[tuple[str, str, str, str]] = []  # where, input, outcome, message
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        docs = t / "docs.jsonl"
        docs.write_text(
            "".join(json.dumps({"id": f"d{i}", "text": f"text number {i}"}) + "\n" for i in range(5))
        )
        (t / "empty.jsonl").write_text("")
        (t / "bin").mkdir()
        (t / "bin" / "ls.txt").write_bytes(b"\x7fELF\x00\x00binary")
        (t / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
        (t / "bad.jsonl").write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n')
        (t / "noid.jsonl").write_text('{"text": "no id"}\n')
        code, _ = cli(["index", "build", str(docs), "--index", str(t / "ix")], t)
        assert code == 0, "could not build the test index"
        broken = t / "broken"
        subprocess.run(["cp", "-r", str(t / "ix"), str(broken)], check=True)
        gen = broken / json.loads((broken / "manifest.json").read_text())["generation"]
        (gen / "dense.npy").write_bytes((gen / "dense.npy").read_bytes()[:100])
        cut = t / "cut"
        subprocess.run(["cp", "-r", str(t / "ix"), str(cut)], check=True)
        gen = cut / json.loads((cut / "manifest.json").read_text())["generation"]
        (gen / "chunks.jsonl").write_bytes((gen / "chunks.jsonl").read_bytes()[:-7])
        badman = t / "badman"
        subprocess.run(["cp", "-r", str(t / "ix"), str(badman)], check=True)
        (badman / "manifest.json").write_text('{"format": 1}')

        cases = [
            ["encode", "--input", "missing.jsonl", "--output", "o.npz"],
            ["encode", "--input", str(t / "empty.jsonl"), "--output", "o.npz"],
            ["encode", "--input", str(t / "bad.jsonl"), "--output", "o.npz"],
            ["encode", "--input", str(t / "latin.txt"), "--output", "o.npz"],
            ["encode", "--input", str(docs), "--output", "o.npz", "--outputs", "sparse"],
            ["encode", "--input", str(docs), "--output", "o.npz", "--dtype", "float16", "--device", "cpu"],
            ["encode", "--model", str(t / "no-model"), "--input", str(docs), "--output", "o.npz"],
            ["index", "build", str(t / "bin"), "--index", str(t / "ix2")],
            ["index", "build", str(t / "empty.jsonl"), "--index", str(t / "ix3")],
            ["index", "build", str(t / "noid.jsonl"), "--index", str(t / "ix4")],
            ["index", "build", str(docs), "--index", str(t / "ix5"), "--chunk-tokens", "0"],
            ["index", "build", str(docs), "--index", str(t / "ix")],
            ["index", "add", str(docs), "--index", str(t / "ix")],
            ["index", "delete", "nope", "--index", str(t / "ix")],
            ["index", "info", str(t / "nowhere")],
            ["index", "info", str(broken)],
            ["index", "info", str(cut)],
            ["index", "info", str(badman)],
            ["search", str(t / "ix"), "cats", "--bogus"],
            ["search", str(t / "ix"), "cats", "--candidates", "0"],
            ["search", str(t / "ix"), "cats", "--weights", "1,1"],
            ["search", str(t / "ix"), "cats", "--mode", "sparse"],
            ["search", str(t / "ix"), "cats", "-k", "0"],
            ["search", str(broken), "cats"],
            ["serve", "--index", str(t / "nowhere")],
            ["serve", "--body-timeout", "0"],
        ]
        for args in cases:
            code, err = cli(args, t)
            shown = " ".join(a.replace(str(t) + "/", "") for a in args)
            last = err.splitlines()[-1] if err else ""
            # one error line (after the command's usage, for a bad option), never a traceback
            ok = code == 2 and "Traceback" not in err and last.startswith("bgekit") and "error:" in last
            bad += not ok
            message = last if ok else " / ".join(err.splitlines())
            outcome = f"exit {code}" + ("" if ok else " FAIL")
            rows.append(("CLI", f"`bgekit {shown}`", outcome, message.replace(str(t) + "/", "")))

        from fastapi.testclient import TestClient

        from bgekit import Embedder
        from bgekit.models.packaged import packaged_model_dir
        from bgekit.server import ServerConfig, create_app

        emb = Embedder.from_pretrained(str(packaged_model_dir()))
        app = create_app(ServerConfig(api_key="k", max_body_bytes=1 << 20), embedder=emb)
        key = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        http = [
            ("POST", "/v1/embeddings", '{"input": "abc \\ud800"}', key),
            ("POST", "/v1/embeddings", '{"input": ["ok", "\\udfff"]}', key),
            ("POST", "/v1/embeddings", '{"input": "x", "model": "\\ud800"}', key),
            ("POST", "/v1/embeddings", '{"input": ""}', key),
            ("POST", "/v1/embeddings", '{"input": []}', key),
            ("POST", "/v1/embeddings", '{"input": "x", "dimensions": true}', key),
            ("POST", "/v1/embeddings", '{"input": "x", "dimensions": 10000}', key),
            ("POST", "/v1/embeddings", '{"input": "x", "encoding_format": "int8"}', key),
            ("POST", "/v1/embeddings", '{"input": "' + "word " * 2000 + '"}', key),
            ("POST", "/v1/embeddings", '{"input": "' + "x" * (2 << 20) + '"}', key),
            ("POST", "/v1/embeddings", '{"input": ', key),
            ("POST", "/v1/embeddings", '{"input": "x"}', {}),
            ("POST", "/v1/embeddings", '{"input": "x"}', {"Authorization": "Bearer wrong"}),
            ("POST", "/encode", '{"inputs": "\\ud83d"}', key),
            ("POST", "/encode", '{"inputs": "x", "outputs": ["sparse"]}', key),
            ("POST", "/encode", '{"inputs": "x", "return_tokens": "yes"}', key),
            ("POST", "/encode", '{"inputs": "x", "kind": "passage"}', key),
            ("POST", "/rerank", '{"query": "q", "documents": ["\\ud800"]}', key),
            ("POST", "/search", '{"query": "q"}', key),
            ("GET", "/openapi.json", "", {}),
            ("POST", "/v1/embeddings", '{"input": "x"}', {"Authorization": "Bearer k"}),  # no Content-Type
        ]
        with TestClient(app) as client:
            for method, path, data, headers in http:
                r = client.request(
                    method, path, content=data.encode("utf-8", "surrogatepass"), headers=headers
                )
                try:
                    message = r.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = r.text[:100]
                ok = 400 <= r.status_code < 500 and "Traceback" not in r.text
                bad += not ok
                shown = data if len(data) < 70 else data[:50] + f"... ({len(data):,} chars)"
                outcome = str(r.status_code) + ("" if ok else " FAIL")
                rows.append(("HTTP", f"`{method} {path} {shown}`", outcome, message))

    print("| where | input | outcome | message |")
    print("|---|---|---|---|")
    for where, what, outcome, message in rows:
        cells = [where, what, outcome, message]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    print(f"\n{len(rows)} bad inputs; {bad} answered with a traceback, a 5xx or not one error line")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
