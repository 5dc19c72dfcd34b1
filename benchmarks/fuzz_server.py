"""Fuzz every endpoint of a live `bgekit serve` with raw JSON bodies: lone surrogates,
non-BMP text, wrong types, NaN / Infinity / huge numbers, nested and empty values, unknown
fields, broken JSON. Counts responses by status; any status >= 500 fails the run.

    python benchmarks/fuzz_server.py --examples 3000 [--reranker DIR] [--index DIR]

Needs hypothesis (e.g. from a venv with schemathesis: `pip install schemathesis`, which
also gives the OpenAPI-driven run recorded beside this one) and httpx; the server runs
under --bgekit-python (default: this interpreter) with the packaged model and an API key.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_server import serve

KEY = "fuzz-key"

# JSON text fragments (raw, so that lone surrogates and NaN survive into the body)
SURROGATES = ['"\\ud800"', '"abc \\udfff"', '"\\ud83d"', '"\\ude00x"', '"ok \\ud800\\ud800"']
NON_BMP = ["😀 grinning", "𠜎𠜱𠝹 ext-B", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "🏳️‍🌈 flags 🇩🇪", "a\u0000b", "\u200b", " "]
NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e308",
    "-1e308",
    "0",
    "-1",
    "5",
    "1.5",
    "2147483648",
    "true",
    "null",
]


def raw_string() -> st.SearchStrategy[str]:
    plain = st.text(max_size=40).map(json.dumps)
    return st.one_of(plain, st.sampled_from(SURROGATES), st.sampled_from([json.dumps(t) for t in NON_BMP]))


def raw_value(depth: int = 2) -> st.SearchStrategy[str]:
    leaf = st.one_of(raw_string(), st.sampled_from(NUMBERS))
    if depth == 0:
        return leaf
    inner = raw_value(depth - 1)
    return st.one_of(
        leaf,
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(["text", "x", "input", ""]), inner), max_size=3).map(
            lambda kv: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kv) + "}"
        ),
    )


FIELDS = {
    "/v1/embeddings": ["input", "model", "encoding_format", "dimensions", "user", "input_type"],
    "/encode": ["inputs", "kind", "outputs", "return_tokens"],
    "/rerank": ["query", "documents", "top_n", "return_documents", "model"],
    "/search": ["query", "k", "mode", "weights", "candidates", "fusion", "rerank", "rerank_top"],
}
VALID = {
    "input": '["hello world"]',
    "inputs": '"hello"',
    "query": '"what is bge"',
    "documents": '["a doc", {"text": "another"}]',
    "encoding_format": '"float"',
    "kind": '"query"',
    "outputs": '["dense"]',
    "mode": '"hybrid"',
    "weights": "[0.4, 0.2, 0.4]",
    "k": "3",
}


@st.composite
def body(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(FIELDS)))
    parts = []
    for field in FIELDS[path]:
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue  # left out
        if choice == 1 and field in VALID:
            parts.append(f'"{field}": {VALID[field]}')
        else:
            parts.append(f'"{field}": {draw(raw_value())}')
    if draw(st.integers(0, 9)) == 0:
        parts.append(f'"unknown_field": {draw(raw_value(0))}')
    text = "{" + ", ".join(parts) + "}"
    if draw(st.integers(0, 19)) == 0:
        text = text[: draw(st.integers(0, len(text)))]  # cut JSON
    return path, text.encode("utf-8", "surrogatepass")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--reranker", default=None)
    ap.add_argument("--index", default=None)
    ap.add_argument("--bgekit-python", default=sys.executable)
    args = ap.parse_args()
    options = ["--api-key", KEY, "--log-level", "error"]
    options += ["--reranker", args.reranker] if args.reranker else []
    options += ["--index", args.index] if args.index else []
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    with serve(options, python=args.bgekit_python) as (_, url):
        client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {KEY}"})

        @settings(
            max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(body())
        def one(case: tuple[str, bytes]) -> None:
            path, data = case
            r = client.post(path, content=data, headers={"Content-Type": "application/json"})
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                failures.append(f"{r.status_code} {path} {data[:200]!r} -> {r.text[:200]}")

        one()
    total = sum(statuses.values())
    print(f"{total} requests; statuses: {dict(sorted(statuses.items()))}")
    print(f"responses >= 500: {len(failures)}")
    for f in failures[:20]:
        print("  ", f)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
