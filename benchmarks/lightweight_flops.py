"""Decoder FLOPs of bge-reranker-v2.5-gemma2-lightweight settings vs the full model.

    python benchmarks/lightweight_flops.py [--query 32] [--passage 400]

Uses the published checkpoint's shape (Gemma-2 9B: 42 layers, hidden 3584, MLP 14336,
16 heads / 8 KV heads of 256) and bgekit's own per-layer FLOP count
(`bgekit.models.llm_reranker.layer_flops`, the one `LLMReranker.last_flops` adds up over the
real sequence lengths of a run). The sequence is [bos] "A: " query "\\n" + "B: " passage +
"\\n" prompt; compression mean-pools the passage by the ratio before each compress layer;
early exit stops after the cutoff layer. The head, embedding and norm costs are left out
(under 0.1% here).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bgekit.models.llm_reranker import layer_flops

GEMMA2_9B = SimpleNamespace(
    hidden_size=3584,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    intermediate_size=14336,
    num_hidden_layers=42,
)


def spent(
    query: int, passage: int, prompt: int, cutoff: int, ratio: int, compress_layers: list[int]
) -> float:
    total = 0.0
    p = passage
    for layer in range(cutoff):
        if ratio > 1 and layer in compress_layers and layer != 0:
            p = math.ceil(p / ratio)
        total += layer_flops(GEMMA2_9B, query + p + prompt)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--query", type=int, default=32, help="tokens of [bos] + 'A: ' query + '\\n'")
    ap.add_argument("--passage", type=int, default=400, help="tokens of 'B: ' passage")
    ap.add_argument("--prompt", type=int, default=14, help="tokens of '\\n' + the default prompt")
    args = ap.parse_args()
    full = spent(args.query, args.passage, args.prompt, 42, 1, [])
    settings = [
        ("full model (42 layers)", 42, 1, []),
        ("cutoff 25", 25, 1, []),
        ("ratio 2 at layer 8, all 42 layers", 42, 2, [8]),
        ("ratio 2 at layer 8, cutoff 25 (the reference's example)", 25, 2, [8]),
        ("ratio 2 at layers 24, 40, cutoff 28 (model card)", 28, 2, [24, 40]),
    ]
    print(f"pair: {args.query} query + {args.passage} passage + {args.prompt} prompt tokens\n")
    print("| setting | TFLOPs per pair | share of full | saved |")
    print("|---|---|---|---|")
    for name, cutoff, ratio, layers in settings:
        f = spent(args.query, args.passage, args.prompt, cutoff, ratio, layers)
        print(f"| {name} | {f / 1e12:.3f} | {100 * f / full:.1f}% | {100 * (1 - f / full):.1f}% |")


if __name__ == "__main__":
    main()
