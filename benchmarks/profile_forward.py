"""Where the time of an encode goes, per operation: torch's profiler over bgekit's encode of
the benchmark texts, each op's self time (so nested ops are not counted twice) grouped into
what the forward does.

    python benchmarks/profile_forward.py [--n 512] [--dtype auto|float32|bfloat16|int8]
        [--threads 2] [--texts mixed|short|long] [--top 25]

Groups: matrix products (the linear kernels), int8 activation quantisation, attention (scores, softmax, the weighted
sum, the fused kernel), LayerNorm, residual adds, GELU outside a fused kernel, casts
(dtype conversions and the copies they make), layout (index / copy / cat / the flat
batch's gathers), pooling + normalisation, and everything else (tokenizer and Python
outside torch ops are "not in an op": the wall time less the ops' self time). Prints a
table of milliseconds for the whole encode and per 1,000 tokens, then the top ops.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from encode_throughput import MAX_LENGTH, cpu_line, make_texts, model_dir  # noqa: E402

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "matrix products",
        (
            "_linear_pointwise",
            "aten::addmm",
            "aten::mm",
            "aten::linear",
            "quantized::linear",
            "aten::_int_mm",
        ),
    ),
    # int8 kernels: each input row's range, rounding to its grid, undoing the zero points
    ("int8 quantise", ("aten::amin", "aten::amax", "aten::round", "aten::clamp", "aten::addcmul")),
    ("attention", ("scaled_dot_product", "flash_attention", "aten::bmm", "aten::softmax", "aten::_softmax")),
    ("LayerNorm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("residual adds", ("aten::add",)),
    ("casts", ("aten::to", "aten::_to_copy", "aten::type_as")),
    (
        "layout (copies, gathers)",
        (
            "aten::copy_",
            "aten::index",
            "aten::cat",
            "aten::clone",
            "aten::contiguous",
            "aten::empty",
            "aten::embedding",
            "aten::index_select",
            "aten::slice",
            "aten::unbind",
            "aten::permute",
            "aten::view",
            "aten::reshape",
            "aten::transpose",
            "aten::as_strided",
            "aten::select",
            "aten::stack",
            "aten::pad",
            "aten::fill_",
            "aten::zero_",
            "aten::expand",
            "aten::unsqueeze",
            "aten::split",
        ),
    ),
    (
        "pooling + normalise",
        (
            "aten::sum",
            "aten::div",
            "aten::norm",
            "aten::linalg_vector_norm",
            "aten::mean",
            "aten::clamp",
            "aten::mul",
            "segment_reduce",
            "index_add",
            "aten::scatter",
        ),
    ),
)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other ops"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", choices=("mixed", "short", "long"), default="mixed")
    ap.add_argument("--top", type=int, default=25)
    ns = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bgekit import EmbedderSettings, EngineConfig
    from bgekit.models import Embedder

    torch.set_num_threads(ns.threads)
    texts = make_texts(ns.n, kind=ns.texts)
    engine = EngineConfig(device="cpu", dtype=ns.dtype, progress=False)
    emb = Embedder.from_pretrained(
        model_dir(), engine=engine, settings=EmbedderSettings(passage_max_length=MAX_LENGTH)
    )
    tokens = sum(len(s.ids) for s in emb.tokenize(texts))
    emb.encode(texts)  # warm-up
    t = time.perf_counter()
    emb.encode(texts)
    plain = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        emb.encode(texts)
        wall = time.perf_counter() - t
    by_group: dict[str, float] = defaultdict(float)
    ops = []
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1000
        by_group[group_of(ev.key)] += ms
        ops.append((ms, ev.key, ev.count))
    in_ops = sum(by_group.values())
    by_group["not in an op (tokenizer, Python)"] = max(0.0, wall * 1000 - in_ops)
    model, flags = cpu_line()
    print(f"cpu: {model}; flags: {', '.join(flags)}; threads {ns.threads}; torch {torch.__version__}")
    print(f"model: all-MiniLM-L6-v2, dtype {ns.dtype} ({'; '.join(emb.compute())})")
    print(
        f"{ns.n} {ns.texts} texts, {tokens:,} tokens; encode {plain * 1000:.0f} ms unprofiled "
        f"({tokens / plain:,.0f} tokens/s), {wall * 1000:.0f} ms profiled\n"
    )
    print("| part | ms | ms per 1k tokens | share |")
    print("|---|---|---|---|")
    total = wall * 1000
    for group, ms in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {ms:.1f} | {ms / tokens * 1000:.2f} | {100 * ms / total:.1f}% |")
    print(f"| total (profiled wall) | {total:.1f} | {total / tokens * 1000:.2f} | 100% |\n")
    print(f"top {ns.top} ops by self time:")
    for ms, key, count in sorted(ops, reverse=True)[: ns.top]:
        print(f"  {ms:9.1f} ms  {count:6d} calls  {group_of(key):<26}  {key}")


if __name__ == "__main__":
    main()
