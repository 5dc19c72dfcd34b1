"""Options shared by the commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bgekit.engine import DTYPES, EngineConfig
from bgekit.errors import BgekitError
from bgekit.types import OUTPUT_KINDS, SEARCH_MODES

if TYPE_CHECKING:
    from bgekit.models import EmbedderSettings
    from bgekit.retrieval import HybridConfig


Default = Callable[..., Any]


def _given(name: str, value: Any, kind: type = str) -> Any:
    return value


def engine_args(p: argparse.ArgumentParser, default: Default = _given) -> None:
    """The engine options every command that loads a model takes (``default(name, value,
    kind)`` gives each its default: ``bgekit serve`` reads ``BGEKIT_<OPTION>``)."""
    g = p.add_argument_group("engine")
    g.add_argument(
        "--device",
        default=default("device", "auto"),
        help="auto (CUDA, then MPS, then CPU), cpu, cuda:0, ...",
    )
    g.add_argument(
        "--devices",
        default=default("devices", ""),
        help="comma-separated devices for data parallel (cuda:0,cuda:1)",
    )
    g.add_argument(
        "--dtype",
        default=default("dtype", "auto"),
        choices=DTYPES,
        help="auto: fp16 on CUDA; on CPUs with AMX-BF16/AVX512-BF16 bf16 matmuls checked against "
        "fp32 at load, else fp32. float32: exact. int8: quantised linear layers (CPU)",
    )
    g.add_argument(
        "--max-batch-tokens",
        type=int,
        default=default("max_batch_tokens", None, int),
        help="tokens per forward batch: real ones on the packed forward, padded ones on "
        "transformers' (default: 2048 on CPU, 16384 on GPU)",
    )
    g.add_argument(
        "--max-batch-size",
        type=int,
        default=default("max_batch_size", 256, int),
        help="inputs per batch at most",
    )
    g.add_argument(
        "--backend",
        default=default("backend", "auto"),
        choices=["auto", "transformers"],
        help="auto: bgekit's packed forward for BERT / XLM-R; transformers: always transformers' own",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def engine_config(ns: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        device=ns.device,
        devices=tuple(d for d in ns.devices.split(",") if d),
        dtype=ns.dtype,
        max_batch_tokens=ns.max_batch_tokens,
        max_batch_size=ns.max_batch_size,
        backend=ns.backend,
        progress=False if ns.no_progress else None,
    )


def long_input_args(p: argparse.ArgumentParser, default: Default = _given) -> None:
    """What an embedder does with a document longer than its window."""
    from bgekit.models.long_input import DEFAULT_MCLS_STRIDE, LONG_INPUTS

    g = p.add_argument_group("long inputs")
    g.add_argument(
        "--long-input",
        choices=LONG_INPUTS,
        default=default("long_input", "truncate"),
        help="truncate: cut at the model's length; chunk: overlapping windows, combined; "
        "mcls: a CLS token every --mcls-stride tokens (CLS-pooled encoders)",
    )
    g.add_argument(
        "--long-input-overlap",
        type=int,
        default=default("long_input_overlap", None, int),
        help="chunk: tokens consecutive windows share (default: 64, at most half a window)",
    )
    g.add_argument(
        "--mcls-stride",
        type=int,
        default=default("mcls_stride", DEFAULT_MCLS_STRIDE, int),
        help="mcls: text tokens per CLS token",
    )
    task_arg(p, default)


def task_arg(p: argparse.ArgumentParser, default: Default = _given, note: str = "") -> None:
    p.add_argument(
        "--task",
        default=default("task", None),
        help="a task of the model's table, whose query and passage instructions both sides get "
        "(BAAI/llm-embedder: qa, icl, chat, lrlm, tool, convsearch; sentence-transformers folders: "
        f"their prompt names; none: the model's default{note})",
    )


def embedder_settings(ns: argparse.Namespace) -> EmbedderSettings:
    from bgekit.models import EmbedderSettings

    return EmbedderSettings(
        long_input=ns.long_input,
        long_input_overlap=ns.long_input_overlap,
        mcls_stride=ns.mcls_stride,
        task=ns.task,
    )


def rerank_args(p: argparse.ArgumentParser) -> None:
    """The second stage of a search or an evaluation: which reranker, how deep, how fused."""
    p.add_argument("--reranker", help="cross-encoder for a second stage")
    p.add_argument("--rerank-top", type=int, default=100, help="first-stage hits the reranker rescores")
    p.add_argument(
        "--rerank-max-length",
        type=int,
        default=None,
        help="tokens per (query, passage) pair the reranker reads (default: its own maximum)",
    )
    p.add_argument(
        "--rerank-weight",
        type=float,
        default=1.0,
        help="the reranker's share, fused with the first stage's scores (each standardised per "
        "query); 1: the reranker alone",
    )


def long_passage_args(p: argparse.ArgumentParser, default: Default = _given) -> None:
    """What a reranker does with a passage that does not fit beside the query."""
    from bgekit.models.long_input import DEFAULT_OVERLAP, LONG_PASSAGES

    g = p.add_argument_group("long passages (reranker)")
    g.add_argument(
        "--long-passage",
        choices=LONG_PASSAGES,
        default=default("long_passage", "truncate"),
        help="truncate: cut the passage to fit; max / mean: score overlapping windows of it, "
        "each with the whole query, and keep the best / the mean",
    )
    g.add_argument(
        "--passage-overlap",
        type=int,
        default=default("passage_overlap", DEFAULT_OVERLAP, int),
        help="tokens consecutive passage windows share (at most half a window)",
    )


# The options of chunk_args, by IndexConfig field.
CHUNK_OPTIONS = ("chunk_tokens", "chunk_overlap", "chunking", "split", "max_document_chars", "oversize")


def chunk_args(p: argparse.ArgumentParser, *, title: str = "chunking", note: str = "") -> None:
    """How an index cuts documents into chunks and which it takes (``bgekit index build``,
    ``bgekit encode --ray --as-index``). Options not given are absent from the namespace
    (:func:`chunk_options` leaves them out), so a caller can tell them from defaults: an
    index built from shards takes the shards' settings where none is given."""
    from bgekit.index.documents import DEFAULT_MAX_DOCUMENT_CHARS

    g = p.add_argument_group(title)
    unset = argparse.SUPPRESS
    g.add_argument(
        "--chunk-tokens",
        type=int,
        default=unset,
        help=f"tokens per chunk, at least 8 (default: the model's max{note})",
    )
    g.add_argument(
        "--chunk-overlap",
        type=int,
        default=unset,
        help=f"tokens shared by consecutive chunks (default: 64{note})",
    )
    g.add_argument(
        "--chunking",
        choices=["independent", "late"],
        default=unset,
        help="independent: each chunk encoded on its own (title first); late: each document encoded "
        f"whole (windowed past the model's length) and each chunk pooled from its tokens (default: "
        f"independent{note})",
    )
    g.add_argument(
        "--split",
        choices=["text", "tokens"],
        default=unset,
        help="text: cut long documents at headings, paragraphs, lines, sentences, then words (code "
        "only between lines), each chunk with its heading path; tokens: plain token windows "
        f"(default: text{note})",
    )
    g.add_argument(
        "--max-document-chars",
        type=int,
        default=unset,
        help="the longest document the index takes, in characters (0: no limit); kept for later adds "
        f"(default: {DEFAULT_MAX_DOCUMENT_CHARS}{note})",
    )
    g.add_argument(
        "--oversize",
        choices=["error", "skip"],
        default=unset,
        help=f"a longer document: stop with an error naming it, or skip it and count it (default: error{note})",
    )


def chunk_options(ns: argparse.Namespace, *, task: bool = True) -> dict[str, Any]:
    """The :func:`chunk_args` options given, as ``IndexConfig`` fields (``--max-document-chars
    0``: no limit), and with ``task`` the ``--task`` when given (documents are encoded with
    its passage instruction, which also takes room in each chunk)."""
    given = {k: getattr(ns, k) for k in CHUNK_OPTIONS if hasattr(ns, k)}
    if "max_document_chars" in given:
        given["max_document_chars"] = given["max_document_chars"] or None
    if task and getattr(ns, "task", None) is not None:
        given["task"] = ns.task
    return given


def model_path(name: str | None) -> str:
    from bgekit.models.packaged import packaged_model_dir

    return name if name else str(packaged_model_dir())


def outputs_arg(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in OUTPUT_KINDS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"outputs must be from {', '.join(OUTPUT_KINDS)}; got {text!r}")
    return parts


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, once (not where the help already says it), a
    list or tuple written as ``a,b`` as the option takes it, and nothing for flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
            or action.nargs == 0
        ):
            return text
        shown = ",".join(str(x) for x in default) if isinstance(default, (tuple, list)) else str(default)
        return f"{text} (default: {shown})" if text else f"default: {shown}"


class Parser(argparse.ArgumentParser):
    """Every bgekit (sub)command's parser: defaults shown in ``--help``, and an unknown
    option reported with the usage of the command it was given to (not the top level's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            self._deepest(ns).error(f"unrecognized arguments: {' '.join(extra)}")
        return ns

    def _deepest(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self
        while True:
            actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            chosen = getattr(ns, actions[0].dest, None) if actions else None
            if chosen is None:
                return parser
            parser = actions[0].choices[chosen]


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is when a line is logged."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """bgekit's own log lines (warnings, progress without a terminal) go to stderr, once."""
    log = logging.getLogger("bgekit")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("bgekit: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def run_parser(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse and run a command; a user's mistake is one line on stderr and status 2, an
    interruption (Ctrl-C) one line and 130 — never a traceback."""
    try:
        ns = build().parse_args(argv)
        _log_to_stderr()
        return int(ns.func(ns))
    except BgekitError as e:
        print(f"bgekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bgekit: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a file the command could not read or write
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"bgekit: error:{where} {e.strerror or e}", file=sys.stderr)
        return 2


def weights_arg(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"weights must be three numbers like 0.4,0.2,0.4; got {text!r}"
        ) from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"weights must be three numbers (dense, lexical, multivector); got {text!r}"
        )
    return parts


def candidates_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"candidates must be a number or 'all'; got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"candidates must be at least 1, or 'all'; got {n}")
    return n


def encoding_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoding", default="utf-8", help="text encoding of the input files (e.g. latin-1)")


def search_args(
    p: argparse.ArgumentParser, *, default_mode: str | None, mode_help: str | None = None, mode: bool = True
) -> None:
    """The search options (mode, weights, candidates, fusion) of every command that searches;
    ``default_mode`` None: the command picks one per query (``mode_help`` says how);
    ``mode=False``: no ``--mode`` (a command that takes several modes its own way)."""
    from bgekit.retrieval import DEFAULT_CANDIDATES

    g = p.add_argument_group("search")
    if mode:
        g.add_argument("--mode", default=default_mode, choices=SEARCH_MODES, help=mode_help)
    g.add_argument(
        "--weights",
        type=weights_arg,
        default=(0.4, 0.2, 0.4),
        help="dense,lexical,multivector weights for hybrid (lexical: sparse head, or BM25); default 0.4,0.2,0.4",
    )
    g.add_argument(
        "--candidates",
        type=candidates_arg,
        default=DEFAULT_CANDIDATES,
        help=f"rows each first-stage scorer gives hybrid / multi-vector search, or 'all' (default {DEFAULT_CANDIDATES})",
    )
    g.add_argument(
        "--fusion",
        default="auto",
        choices=["auto", "weighted", "rrf"],
        help="auto: RRF when BM25 takes part, else the weighted sum",
    )


def hybrid_config(ns: argparse.Namespace) -> HybridConfig:
    from bgekit.retrieval import HybridConfig

    return HybridConfig(weights=ns.weights, candidates=ns.candidates, fusion=ns.fusion)
