"""Cross-encoder reranking throughput: bgekit (fp32, bf16) vs FlagEmbedding's FlagReranker
and sentence-transformers' CrossEncoder (torch, ONNX Runtime, OpenVINO), same pairs, same
model, one run.

    python benchmarks/rerank_throughput.py --work DIR [--shape minilm|m3] [--pairs 400]
        [--peers-python PY] [--onnx-python PY] [--openvino-python PY] [--repeat 2]
        [--only bgekit:float32,bgekit:bfloat16,FlagReranker,st:CrossEncoder,st:onnx,st:openvino]

Models, built offline in ``DIR``: ``minilm``, all-MiniLM-L6-v2's weights as a one-logit
BertForSequenceClassification (the shape of cross-encoder/ms-marco-MiniLM-L-6-v2) with a
seeded head; ``m3``, bge-reranker-v2-m3's shape (XLM-RoBERTa large, 24 x 1024, 16 heads of
64) with random weights: ``benchmarks/m3_long.py``'s model (built in ``DIR/model`` when
missing) as a one-logit XLMRobertaForSequenceClassification with a seeded head.
``st:onnx`` / ``st:openvino`` are CrossEncoder with that backend (exported once into
``DIR/ce-onnx-SHAPE`` / ``DIR/ce-openvino-SHAPE``), each from its own Python because their
pins do not resolve beside FlagEmbedding's.
Pairs: SciFact claims with abstracts (seed 0), at most 512 tokens per pair. Each runner in
its own process, after a warm-up, best of ``--repeat``; scores compared with bgekit fp32
(max |difference| and Spearman).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = ("bgekit:float32", "bgekit:bfloat16", "FlagReranker", "st:CrossEncoder", "st:onnx", "st:openvino")
MAX_LENGTH = 512


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    claims = [json.loads(x)["text"] for x in (ROOT / "data/scifact/queries.jsonl").open()]
    docs = [json.loads(x) for x in (ROOT / "data/scifact/corpus.jsonl").open()]
    out = []
    for _ in range(n):
        d = rng.choice(docs)
        out.append((rng.choice(claims), f"{d['title']} {d['text']}"))
    return out


def m3_cross_encoder(m3: Path, out: Path, seed: int = 0) -> Path:
    """bge-reranker-v2-m3's shape: m3_long.py's random XLM-RoBERTa large with a seeded
    one-logit head (written once)."""
    if out.exists():
        return out
    import shutil

    import torch
    from m3_long import build
    from transformers import XLMRobertaForSequenceClassification
    from transformers.utils import logging as hf_logging

    build(m3)
    tmp = out.with_name(out.name + ".tmp")
    hf_logging.set_verbosity_error()  # the fresh head's "newly initialized" report
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification.from_pretrained(str(m3), num_labels=1)
    model.save_pretrained(tmp)
    for name in m3.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "sentencepiece")):
            shutil.copy(name, tmp / name.name)
    tmp.rename(out)
    return out


def worker(runner: str, folder: str, pairs_file: str, repeat: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    pairs = [tuple(p) for p in json.loads(Path(pairs_file).read_text())]
    info = ""
    if runner.startswith("bgekit:"):
        from bgekit import EngineConfig, Reranker

        engine = EngineConfig(device="cpu", dtype=runner.split(":")[1], progress=False)  # type: ignore[arg-type]
        rr = Reranker.from_pretrained(folder, max_length=MAX_LENGTH, engine=engine)
        info = rr.compute()[0]

        def run(p: list) -> list[float]:
            return rr.score(p).tolist()

    elif runner == "FlagReranker":
        from FlagEmbedding import FlagReranker

        fr = FlagReranker(folder, use_fp16=False, devices="cpu", max_length=MAX_LENGTH, batch_size=32)

        def run(p: list) -> list[float]:
            return list(fr.compute_score(p, batch_size=32, max_length=MAX_LENGTH))

    else:
        from sentence_transformers import CrossEncoder

        backend = runner.split(":")[1] if runner in ("st:onnx", "st:openvino") else "torch"
        export = Path(f"{folder}-{backend}")  # exported once, beside the model
        source = str(export) if backend != "torch" and export.exists() else folder
        ce = CrossEncoder(source, device="cpu", max_length=MAX_LENGTH, backend=backend)
        if backend != "torch" and not export.exists():
            ce.save(str(export))
        info = f"sentence-transformers CrossEncoder, {backend}"
        if backend == "openvino":
            import openvino as ov

            info += f", {ov.Core().get_property('CPU', 'INFERENCE_PRECISION_HINT')}"

        def run(p: list) -> list[float]:
            return ce.predict(
                p, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False
            ).tolist()

    run(pairs[:8])
    times, scores = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        scores = run(pairs)
        times.append(time.perf_counter() - start)
    return {"runner": runner, "seconds": min(times), "scores": scores, "path": info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", choices=("minilm", "m3"), default="minilm")
    ap.add_argument("--peers-python", default=sys.executable)
    ap.add_argument("--onnx-python", default=sys.executable)
    ap.add_argument("--openvino-python", default=sys.executable)
    ap.add_argument("--only", default=",".join(RUNNERS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--pairs-file", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    folder = ns.work / ("minilm-cross-encoder" if ns.shape == "minilm" else "m3-cross-encoder")
    if ns.worker:
        print(json.dumps(worker(ns.worker, str(folder), ns.pairs_file, ns.repeat, ns.threads)))
        return
    import numpy as np
    from scipy.stats import spearmanr

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from encode_throughput import cpu_line, model_dir
    from tests.real_models import minilm_cross_encoder

    ns.work.mkdir(parents=True, exist_ok=True)
    if ns.shape == "minilm":
        minilm_cross_encoder(Path(model_dir()), folder)
    else:
        m3_cross_encoder(ns.work / "model", folder)
    pairs = make_pairs(ns.pairs)
    pairs_file = ns.work / "pairs.json"
    pairs_file.write_text(json.dumps(pairs))
    model, flags = cpu_line()
    print(f"cpu: {model}; flags used: {', '.join(flags)}; threads: {ns.threads}; {len(pairs)} pairs\n")
    results = {}
    for runner in ns.only.split(","):
        python = sys.executable if runner.startswith("bgekit:") else ns.peers_python
        python = {"st:onnx": ns.onnx_python, "st:openvino": ns.openvino_python}.get(runner, python)
        cmd = [python, __file__, "--work", str(ns.work), "--worker", runner, "--pairs-file", str(pairs_file)]
        cmd += ["--repeat", str(ns.repeat), "--threads", str(ns.threads), "--shape", ns.shape]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{runner}: failed\n{proc.stderr[-2000:]}")
            continue
        results[runner] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = np.asarray(results["bgekit:float32"]["scores"]) if "bgekit:float32" in results else None
    print(
        "| runner | seconds | pairs/s | max abs diff to bgekit fp32 | Spearman to bgekit fp32 | bgekit fp32 / bf16 speed-up |"
    )
    print("|---|---|---|---|---|---|")
    for runner, r in results.items():
        s = np.asarray(r["scores"])
        diff = f"{np.abs(s - ref).max():.2e}" if ref is not None else "-"
        rho = f"{spearmanr(s, ref)[0]:.5f}" if ref is not None else "-"
        ups = [
            f"{r['seconds'] / results[o]['seconds']:.2f}x"
            for o in ("bgekit:float32", "bgekit:bfloat16")
            if o in results
        ]
        print(
            f"| {runner} | {r['seconds']:.1f} | {len(pairs) / r['seconds']:,.1f} | {diff} | {rho} | {' / '.join(ups)} |"
        )
    for runner, r in results.items():
        if r["path"]:
            print(f"\n{runner} ran: {r['path']}", end="")
    print()


if __name__ == "__main__":
    main()
