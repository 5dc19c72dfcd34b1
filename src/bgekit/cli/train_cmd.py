"""``bgekit mine``, ``bgekit teacher-scores``, ``bgekit train embedder|reranker``, ``bgekit merge``.

``python -m bgekit.train embedder|reranker ...`` takes the same options as ``bgekit train``,
so that ``torchrun`` / ``accelerate launch`` can start it on several processes.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bgekit.cli.common import engine_args, engine_config, model_path
from bgekit.cli.lora_args import add_lora_args, lora_from_args
from bgekit.errors import InputError


def range_arg(text: str) -> tuple[int, int]:
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"range must be START:END (e.g. 10:100), got {text!r}") from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"range needs 0 <= START < END, got {text!r}")
    return start, end


def floats_arg(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_mine(ns: argparse.Namespace) -> int:
    from bgekit.index.loaders import read_source
    from bgekit.models import Embedder
    from bgekit.train import load_train_data, mine_hard_negatives, write_train_data

    examples = load_train_data(ns.input)
    corpus = read_source(ns.corpus) if ns.corpus else None
    embedder = Embedder.from_pretrained(model_path(ns.model), engine=engine_config(ns))
    start = time.perf_counter()
    mined = mine_hard_negatives(
        embedder, examples, corpus, rank_range=ns.range, negatives=ns.negatives, seed=ns.seed
    )
    write_train_data(ns.output, mined)
    pool = f"{len(corpus)} corpus documents" if corpus else "the texts of the data"
    print(
        f"mined {ns.negatives} negatives (ranks {ns.range[0]}:{ns.range[1]} over {pool}) for "
        f"{len(mined)} queries in {time.perf_counter() - start:.1f}s -> {ns.output}"
    )
    return 0


def cmd_teacher(ns: argparse.Namespace) -> int:
    from bgekit.models import Reranker
    from bgekit.train import add_teacher_scores, load_train_data, write_train_data

    examples = load_train_data(ns.input)
    reranker = Reranker.from_pretrained(model_path(ns.reranker), engine=engine_config(ns))
    start = time.perf_counter()
    scored = add_teacher_scores(reranker, examples)
    write_train_data(ns.output, scored)
    pairs = sum(len(e.pos) + len(e.neg) for e in scored)
    print(
        f"scored {pairs} pairs of {len(scored)} queries in {time.perf_counter() - start:.1f}s -> {ns.output}"
    )
    return 0


def _common(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": ns.epochs,
        "max_steps": ns.max_steps,
        "batch_size": ns.batch_size,
        "group_size": ns.group_size,
        "learning_rate": ns.lr,
        "warmup": ns.warmup,
        "weight_decay": ns.weight_decay,
        "grad_accum": ns.grad_accum,
        "seed": ns.seed,
        "precision": ns.precision,
        "gradient_checkpointing": ns.gradient_checkpointing,
        "logging_steps": ns.logging_steps,
        "save_steps": ns.save_steps,
        "deepspeed": ns.deepspeed,
        "overwrite": ns.overwrite,
        "progress": False if ns.no_progress else None,
    }


def _report(result: Any) -> int:
    if int(os.environ.get("RANK", "0")) != 0:  # one line per run, not per torchrun process
        return 0
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    print(
        f"trained {result.steps} steps in {result.seconds:.1f}s (last logged loss {loss}) -> {result.output}"
    )
    return 0


def cmd_train_embedder(ns: argparse.Namespace) -> int:
    from bgekit.train import EmbedderTrainConfig, train_embedder

    cfg = EmbedderTrainConfig(
        **_common(ns),
        temperature=ns.temperature,
        query_max_length=ns.query_max_length,
        passage_max_length=ns.passage_max_length,
        query_instruction=ns.query_instruction,
        cross_device_negatives=ns.cross_device_negatives,
        m3=ns.m3,
        self_distill=not ns.no_self_distill,
        multivector_dim=ns.multivector_dim,
        query_format=ns.query_format,
        lora=lora_from_args(ns),
        icl=_icl(ns),
        add_tokens=tuple(ns.add_tokens or ()),
    )
    return _report(train_embedder(model_path(ns.model), ns.data, ns.output, cfg))


def _icl(ns: argparse.Namespace) -> Any:
    lengths = (ns.icl_max_length, ns.icl_query_length, ns.icl_passage_length)
    if ns.icl_examples is None:
        if any(v is not None for v in lengths):
            raise InputError(
                "--icl-max-length / --icl-query-length / --icl-passage-length need --icl-examples"
            )
        return None
    from bgekit.train.icl import IclSettings

    given = {"max_length": ns.icl_max_length, "query_max_length": ns.icl_query_length}
    given["passage_max_length"] = ns.icl_passage_length
    return IclSettings(examples=ns.icl_examples, **{k: v for k, v in given.items() if v is not None})


def cmd_train_reranker(ns: argparse.Namespace) -> int:
    from bgekit.train import RerankerTrainConfig, train_reranker

    cfg = RerankerTrainConfig(
        **_common(ns),
        max_length=ns.max_length,
        query_max_length=ns.query_max_length,
        lora=lora_from_args(ns),
        start_layer=ns.start_layer,
        special_tokens=ns.special_tokens or (),
    )
    return _report(train_reranker(model_path(ns.model), ns.data, ns.output, cfg))


def names_arg(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def cmd_merge(ns: argparse.Namespace) -> int:
    from bgekit.train import merge_models

    models = [m for m in ns.models.split(",") if m]
    weights = ns.weights or tuple(1.0 / len(models) for _ in models)
    if len(weights) != len(models):
        raise InputError(f"{len(models)} models but {len(weights)} weights")
    out = merge_models(models, weights, ns.output, overwrite=ns.overwrite)
    print(f"merged {len(models)} models with weights {list(weights)} -> {out}")
    return 0


def _train_common(p: argparse.ArgumentParser, group_size: int) -> None:
    p.add_argument("--model", help="starting checkpoint: hub id or folder (default: the packaged model)")
    p.add_argument(
        "--data", required=True, help="training JSONL (query, pos, neg[, pos_scores, neg_scores, prompt])"
    )
    p.add_argument(
        "--output", required=True, help="folder for the trained model (written when training ends)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)"
    )
    g.add_argument("--batch-size", type=int, default=8, help="queries per device and step")
    g.add_argument(
        "--group-size", type=int, default=group_size, help="passages per query: 1 positive + negatives"
    )
    g.add_argument("--lr", type=float, default=2e-5, help="learning rate")
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up as a fraction of the steps")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16", "auto"],
        default="fp32",
        help="fp16/bf16: mixed precision (bf16 also on CPUs with AMX/AVX512-BF16); a LoRA run loads its "
        "frozen base in it; auto: bf16 where the hardware has it",
    )
    g.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    g.add_argument("--logging-steps", type=int, default=10)
    g.add_argument(
        "--save-steps", type=int, default=None, help="also checkpoint every N steps into OUTPUT-checkpoints"
    )
    g.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config (passed to the Trainer)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def register_train(sub: Any) -> None:
    """``train embedder`` and ``train reranker`` under ``sub`` (``bgekit train`` or ``python -m bgekit.train``)."""
    p = sub.add_parser("embedder", help="fine-tune an embedder (dense, or BGE-M3 unified with --m3)")
    _train_common(p, group_size=8)
    g = p.add_argument_group("embedder")
    g.add_argument("--temperature", type=float, default=0.02)
    g.add_argument("--query-max-length", type=int, default=None, help="default: the model's")
    g.add_argument("--passage-max-length", type=int, default=None, help="default: the model's")
    g.add_argument("--query-instruction", default=None, help="prefix for queries (default: the model's)")
    g.add_argument("--cross-device-negatives", action="store_true", help="share negatives across processes")
    g.add_argument("--m3", action="store_true", help="train dense, sparse and multi-vector heads together")
    g.add_argument("--no-self-distill", action="store_true", help="--m3 without self-knowledge distillation")
    g.add_argument("--multivector-dim", type=int, default=None, help="size of a new multi-vector head")
    g.add_argument(
        "--query-format",
        default=None,
        help="how the instruction and query are joined, two {} (default: the model's; e.g. '<instruct>{}\\n<query>{}')",
    )
    g.add_argument(
        "--add-tokens",
        nargs="+",
        default=None,
        metavar="TOKEN",
        help="special tokens to add (embeddings resized)",
    )
    add_lora_args(p)
    g = p.add_argument_group("in-context examples (bge-en-icl)")
    g.add_argument(
        "--icl-examples",
        type=int,
        default=None,
        metavar="K",
        help="give each query 0..K examples of its task (queries then take the ICL layout at inference too)",
    )
    g.add_argument(
        "--icl-max-length", type=int, default=None, help="tokens all of a query's examples may take"
    )
    g.add_argument(
        "--icl-query-length", type=int, default=None, help="tokens of an example's query (default 64)"
    )
    g.add_argument(
        "--icl-passage-length", type=int, default=None, help="tokens of an example's answer (default 96)"
    )
    p.set_defaults(func=cmd_train_embedder)

    p = sub.add_parser(
        "reranker", help="fine-tune a cross-encoder, or an LLM reranker (yes/no, layer-wise) with --lora"
    )
    _train_common(p, group_size=8)
    g = p.add_argument_group("reranker")
    g.add_argument("--max-length", type=int, default=512, help="tokens per (query, passage) pair")
    g.add_argument("--query-max-length", type=int, default=None, help="default: 3/4 of --max-length")
    add_lora_args(p)
    g = p.add_argument_group("LLM rerankers")
    g.add_argument(
        "--start-layer",
        type=int,
        default=None,
        help="layer-wise: first layer trained to score (default: the model's)",
    )
    g.add_argument(
        "--special-tokens",
        type=names_arg,
        default=None,
        help="comma-separated tokens to add to the vocabulary",
    )
    p.set_defaults(func=cmd_train_reranker)


def register(sub: Any) -> None:
    p = sub.add_parser("mine", help="mine hard negatives for training data with the current model")
    p.add_argument("--model", help="hub id or local folder (default: the packaged model)")
    p.add_argument("--input", required=True, help="training JSONL with query and pos")
    p.add_argument("--corpus", help="documents to mine from (JSONL or folder); default: the data's own texts")
    p.add_argument("--output", required=True, help="JSONL to write (atomically)")
    p.add_argument(
        "--range", type=range_arg, default=(10, 100), help="ranks to sample from, START:END (0-based)"
    )
    p.add_argument("--negatives", type=int, default=15, help="negatives per query")
    p.add_argument("--seed", type=int, default=42)
    engine_args(p)
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("teacher-scores", help="add a reranker's scores to training data (for distillation)")
    p.add_argument("--reranker", required=True, help="cross-encoder: hub id or local folder")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    engine_args(p)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("train", help="fine-tune an embedder or a reranker (transformers Trainer)")
    register_train(p.add_subparsers(dest="what", required=True))

    p = sub.add_parser("merge", help="average same-architecture models (LM-Cocktail style)")
    p.add_argument("--models", required=True, help="comma-separated folders or hub ids")
    p.add_argument(
        "--weights", type=floats_arg, default=None, help="comma-separated, summing to 1 (default: equal)"
    )
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_merge)
