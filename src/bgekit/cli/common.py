"""Options shared by the commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bgekit.engine import DTYPES, EngineConfig
from bgekit.errors import BgekitError
from bgekit.types import OUTPUT_KINDS


def engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda:0, ...")
    g.add_argument("--devices", default="", help="comma-separated devices for data parallel (cuda:0,cuda:1)")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="auto: fp16 on CUDA; on CPUs with AMX-BF16/AVX512-BF16 bf16 matmuls checked against "
        "fp32 at load, else fp32. float32: exact. int8: quantised linear layers (CPU)",
    )
    g.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="padded tokens per batch (default: 2048 on CPU, 16384 on GPU)",
    )
    g.add_argument("--max-batch-size", type=int, default=256, help="inputs per batch at most")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def engine_config(ns: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        device=ns.device,
        devices=tuple(d for d in ns.devices.split(",") if d),
        dtype=ns.dtype,
        max_batch_tokens=ns.max_batch_tokens,
        max_batch_size=ns.max_batch_size,
        progress=False if ns.no_progress else None,
    )


def model_path(name: str | None) -> str:
    from bgekit.models.packaged import packaged_model_dir

    return name if name else str(packaged_model_dir())


def outputs_arg(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in OUTPUT_KINDS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"outputs must be from {', '.join(OUTPUT_KINDS)}; got {text!r}")
    return parts


def run_parser(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse and run a command; bgekit's own errors become one line on stderr and status 2."""
    try:
        ns = build().parse_args(argv)
        return int(ns.func(ns))
    except BgekitError as e:
        print(f"bgekit: error: {e}", file=sys.stderr)
        return 2
