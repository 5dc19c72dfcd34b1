"""``bgekit serve``: every option also reads ``BGEKIT_<OPTION>`` from the environment
(e.g. ``BGEKIT_API_KEY``, ``BGEKIT_MAX_BATCH_TOKENS``); a command-line value wins. The
engine options are the ones every command takes."""

from __future__ import annotations

import argparse
import os
from typing import Any

from bgekit.cli.common import engine_args, engine_config, long_input_args, long_passage_args
from bgekit.errors import InputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env(name: str, default: Any, kind: type = str) -> Any:
    raw = os.environ.get(f"BGEKIT_{name.upper()}")
    if raw is None:
        return default
    if kind is bool:
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise InputError(f"BGEKIT_{name.upper()}={raw!r} is not a boolean (use true or false)")
        return raw.strip().lower() in _TRUE
    try:
        return kind(raw)
    except ValueError:
        raise InputError(f"BGEKIT_{name.upper()}={raw!r} is not a valid {kind.__name__}") from None


def cmd_serve(ns: argparse.Namespace) -> int:
    import uvicorn

    from bgekit.server import ServerConfig, create_app, memory

    memory.limit_arenas()  # before the server's threads allocate (see bgekit.server.memory)
    memory.limit_kernel_caches()  # before the first model run: bounds the per-shape kernel caches

    config = ServerConfig(
        model=ns.model,
        reranker=ns.reranker,
        index=ns.index,
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key,
        gather_tokens=ns.gather_tokens,
        max_concurrent_requests=ns.max_concurrent_requests,
        max_input_tokens=ns.max_input_tokens,
        truncate=ns.truncate,
        max_inputs_per_request=ns.max_inputs_per_request,
        max_body_bytes=ns.max_body_bytes,
        body_timeout=ns.body_timeout,
        long_input=ns.long_input,
        long_input_overlap=ns.long_input_overlap,
        mcls_stride=ns.mcls_stride,
        task=ns.task,
        long_passage=ns.long_passage,
        passage_overlap=ns.passage_overlap,
        index_poll=ns.index_poll,
        max_image_bytes=ns.max_image_bytes,
        max_image_pixels=ns.max_image_pixels,
        allow_image_urls=ns.allow_image_urls,
        engine=engine_config(ns),
    )
    app = create_app(config)
    app.state.bgekit.load()  # a bad model or index is one error line, before anything listens
    uvicorn.run(app, host=config.host, port=config.port, log_level=ns.log_level, timeout_graceful_shutdown=30)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP server: /v1/embeddings, /embed, /rerank, /search (needs the server extra)",
        description="HTTP server for embeddings, reranking and search. Every option also reads "
        "BGEKIT_<OPTION> from the environment (e.g. BGEKIT_API_KEY); a command-line value wins.",
    )
    p.add_argument("--model", default=_env("model", None), help="embedder (default: the packaged model)")
    p.add_argument("--reranker", default=_env("reranker", None), help="cross-encoder for /rerank")
    p.add_argument("--index", default=_env("index", None), help="index folder for /search")
    p.add_argument(
        "--index-poll",
        type=float,
        default=_env("index_poll", 1.0, float),
        help="seconds between looks for a new generation of --index (another process's add or "
        "delete), served from then on; 0: only on POST /admin/reload",
    )
    p.add_argument("--host", default=_env("host", "127.0.0.1"), help="address to listen on")
    p.add_argument("--port", type=int, default=_env("port", 8080, int), help="port to listen on")
    p.add_argument("--api-key", default=_env("api_key", None), help="require 'Authorization: Bearer KEY'")
    p.add_argument(
        "--gather-tokens",
        type=int,
        default=_env("gather_tokens", 16384, int),
        help="tokens of queued requests gathered into one engine run",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=_env("max_concurrent_requests", 512, int),
        help="requests in flight before 429",
    )
    p.add_argument(
        "--max-input-tokens",
        type=int,
        default=_env("max_input_tokens", None, int),
        help="longest input (default: the model's limit; with --long-input chunk 32768, mcls the "
        "position table)",
    )
    p.add_argument(
        "--truncate",
        action=argparse.BooleanOptionalAction,
        default=_env("truncate", False, bool),
        help="cut inputs over the limit instead of answering 413",
    )
    p.add_argument(
        "--max-inputs-per-request",
        type=int,
        default=_env("max_inputs_per_request", 2048, int),
        help="texts (or pairs, images) one request may hold; more is refused (413)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=_env("max_body_bytes", 8 << 20, int),
        help="largest request body (413 beyond it, before it is read)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=_env("body_timeout", 30.0, float),
        help="seconds each part of a request body may take to arrive (408 after)",
    )
    p.add_argument(
        "--max-image-bytes",
        type=int,
        default=_env("max_image_bytes", 32 << 20, int),
        help="largest image accepted, encoded (413 beyond it; image models)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=_env("max_image_pixels", 50_000_000, int),
        help="most pixels (width x height) of an image accepted (413 beyond it, before decoding)",
    )
    p.add_argument(
        "--allow-image-urls",
        action=argparse.BooleanOptionalAction,
        default=_env("allow_image_urls", False, bool),
        help="fetch http(s) image URLs that clients send (off: 422); the server then reaches "
        "whatever its network reaches: for trusted clients only",
    )
    long_input_args(p, _env)
    long_passage_args(p, _env)
    engine_args(p, _env)
    p.add_argument(
        "--log-level", default=_env("log_level", "info"), choices=["debug", "info", "warning", "error"]
    )
    p.set_defaults(func=cmd_serve)
