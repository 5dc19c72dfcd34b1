"""Does the bf16 CPU path pay for decoder LLMs? fp32 vs bf16 matmuls on a Qwen2-0.5B-shaped
decoder embedder (random weights, transformers' layers with bgekit's kernels patched in).

    python benchmarks/llm_precision.py --work DIR [--texts 64] [--threads 2]

The model (24 layers, hidden 896, 14 heads / 2 key-value heads, FFN 4864; a small BPE
vocabulary, which does not change the layers' cost) is built once in ``DIR``. Texts: SciFact
abstracts cut at 256 tokens. Reports tokens/s per precision and the cosine of the bf16
vectors to fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from qwen2_shape import build_qwen2_shape  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args()
    import numpy as np
    import torch
    from encode_throughput import cpu_line

    from bgekit import Embedder, EmbedderSettings, EngineConfig

    torch.set_num_threads(ns.threads)
    folder = build_qwen2_shape(ns.work / "qwen2-0.5b-shape")
    docs = [json.loads(x)["text"] for x in (ROOT / "data/scifact/corpus.jsonl").open()][: ns.texts]
    model, flags = cpu_line()
    print(f"cpu: {model}; flags used: {', '.join(flags)}; threads: {ns.threads}")
    settings = EmbedderSettings(passage_max_length=256)
    out = {}
    for dtype in ("float32", "bfloat16"):
        engine = EngineConfig(device="cpu", dtype=dtype, progress=False)  # type: ignore[arg-type]
        m = Embedder.from_pretrained(str(folder), settings=settings, engine=engine)
        tokens = sum(len(s) for s in m.tokenize(docs))
        m.encode(docs[:2])
        start = time.perf_counter()
        out[dtype] = m.encode(docs).dense
        seconds = time.perf_counter() - start
        print(
            f"{dtype}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s ({m.compute()[0]})"
        )
        out[dtype + "_s"] = seconds
    a, b = out["float32"], out["bfloat16"]
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(
        f"bf16 speed-up {out['float32_s'] / out['bfloat16_s']:.2f}x; cosine to fp32 min {cos.min():.6f} mean {cos.mean():.6f}"
    )


if __name__ == "__main__":
    main()
