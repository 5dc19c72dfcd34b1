"""Limits, metrics, errors and authentication around every route."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from bgekit.server.state import ServerState

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its result was ready."""


async def wait_or_drop(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it (a queued job is
    dropped before it runs)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientGone


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error body every route answers with (OpenAI's shape)."""
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param,
            "code": status,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """Pydantic's errors as one line naming each field, and the first field. A list that
    fails on one item also fails the single-string branch of its union: only the deeper
    error is kept."""
    found: list[tuple[str, str]] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # loc holds a character offset, not a field
            at = [x for x in err.get("loc", ()) if isinstance(x, int)]
            found.append(("body", f"malformed JSON{f' at character {at[0]}' if at else ''}"))
            continue
        if err.get("type") == "model_attributes_type" and tuple(err.get("loc", ())) == ("body",):
            # FastAPI reads a body as JSON only when its Content-Type says so
            found.append(("body", "expected a JSON object (send it with Content-Type: application/json)"))
            continue
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # Drop pydantic's union-branch labels (``str``, ``list[str]``, model names) from the path.
        loc = [
            x
            for x in loc
            if not x.startswith(("str", "list[", "function-after", "constrained-str")) and not x[:1].isupper()
        ]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if "unable to parse raw data as a unicode string" in msg:
            msg = "not valid Unicode (it holds a lone surrogate)"
        found.append((".".join(loc) or "body", msg))
    # A union reports every branch; where a field has a specific error, the other branches'
    # "should be a valid list / string / object" only add noise.
    specific = {f for f, m in found if m not in _UNION_NOISE}
    kept = [
        (f, m)
        for f, m in found
        if not (m in _UNION_NOISE and (f in specific or any(g.startswith(f + ".") for g in specific)))
    ]
    parts = [f"{f}: {m}" for f, m in kept or found]
    return "; ".join(dict.fromkeys(parts)), (kept or found)[0][0] if found else None


_UNION_NOISE = frozenset(
    {
        "Input should be a valid string",
        "Input should be a valid list",
        "Input should be a valid dictionary or object to extract fields from",
    }
)

OPEN_PATHS = frozenset({"/health", "/ready"})  # everything else needs the key when one is set


def key_matches(headers: dict[bytes, bytes], api_key: str) -> bool:
    """``Authorization: Bearer KEY`` or ``x-api-key: KEY``, compared in constant time."""
    given = headers.get(b"x-api-key")
    auth = headers.get(b"authorization", b"")
    if auth.lower().startswith(b"bearer "):
        given = auth[7:].strip()
    return given is not None and secrets.compare_digest(given, api_key.encode())


class LimitsMiddleware:
    """Everything that must happen before a request costs anything, in this order:
    authentication (401, before any slot is taken or any byte of the body is read), the
    body-size limit (413 from ``Content-Length``, or as soon as a streamed body passes it),
    the concurrency limit (429 + Retry-After); then a timeout for slow bodies (408), request
    metrics, and 500 for server faults. A 413 sent while the client is still uploading is
    answered as :func:`_answer_early` describes. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request, which shows at high rates."""

    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, path = self.state, scope["path"]
        cfg = state.config
        headers = dict(scope["headers"])
        start = time.perf_counter()
        body = _Body(headers.get(b"content-length"), headers.get(b"expect", b"").lower() == b"100-continue")
        send = _answer_early(send, receive, body, cfg.body_timeout)

        async def refuse(status: int, message: str, extra: dict[str, str] | None = None) -> None:
            state.metrics.requests.labels(path, str(status)).inc()
            await error_response(status, message, headers=extra)(scope, receive, send)

        if cfg.api_key is not None and path not in OPEN_PATHS and not key_matches(headers, cfg.api_key):
            await refuse(
                401,
                "missing or wrong API key (send 'Authorization: Bearer KEY')",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        declared = body.declared
        if declared is not None and (not declared.isdigit() or int(declared) > cfg.max_body_bytes):
            await refuse(413, f"the request body is over the limit of {cfg.max_body_bytes} bytes")
            return
        counted = scope["method"] == "POST"
        limit = cfg.max_concurrent_requests
        if counted and state.in_flight >= limit:
            await refuse(429, f"more than {limit} requests in flight; retry shortly", {"Retry-After": "1"})
            return
        status = {"code": 500, "started": False}

        async def send_and_note(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        if counted:
            state.in_flight += 1
            state.metrics.in_flight.inc()
        try:
            await self.app(
                scope, _guarded_body(receive, body, cfg.max_body_bytes, cfg.body_timeout), send_and_note
            )
        except Exception:
            logger.exception("error serving %s", path)
            if not status["started"]:
                await error_response(500, "internal server error")(scope, receive, send_and_note)
        finally:
            if counted:
                state.in_flight -= 1
                state.metrics.in_flight.dec()
            state.metrics.requests.labels(path, str(status["code"])).inc()
            state.metrics.latency.labels(path).observe(time.perf_counter() - start)
            for name, b in (("embedder", state.embed_batcher), ("reranker", state.rerank_batcher)):
                if b is not None:
                    state.metrics.queue_depth.labels(name).set(b.depth)


# The most of a refused body read and thrown away so that its client sees the 413.
DRAIN_BYTES = 64 << 20


@dataclass
class _Body:
    """How much of the request body has arrived, and whether all of it has."""

    declared: bytes | None = None  # the Content-Length header
    waits_for_continue: bool = False  # Expect: 100-continue
    received: int = 0
    done: bool = False

    def note(self, message: Any) -> None:
        self.received += len(message.get("body", b""))
        self.done = not message.get("more_body", False)

    def worth_draining(self) -> bool:
        """Whether the rest of the body is expected and within :data:`DRAIN_BYTES`."""
        too_much = self.declared is not None and self.declared.isdigit() and int(self.declared) > DRAIN_BYTES
        return not (self.done or too_much or (self.waits_for_continue and self.received == 0))


def _answer_early(send: Any, receive: Any, body: _Body, timeout: float) -> Any:
    """``send`` for a 413 that goes out while the client is still sending its body.

    Closing a socket with unread data resets the connection, and a client still uploading
    (``urllib``, which sends the whole body before it reads) then sees only the reset, not
    the answer. So such a response says ``Connection: close``, its bytes are sent at once
    (a client that reads early has them), and before it is completed (after which the
    server no longer reads) the rest of the body is read and thrown away: up to
    :data:`DRAIN_BYTES` in all, for at most ``timeout`` seconds, and not when the client
    waits for ``100 Continue`` or declared more than that; past those bounds the
    connection is closed as before. Every other response passes untouched."""
    draining = {"on": False}

    async def answer(message: Any) -> None:
        if message["type"] == "http.response.start":
            draining["on"] = message["status"] == 413 and body.worth_draining()
            if draining["on"]:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        elif (
            message["type"] == "http.response.body" and draining["on"] and not message.get("more_body", False)
        ):
            await send({**message, "more_body": True})
            await _drain(receive, body, timeout)
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return answer


async def _drain(receive: Any, body: _Body, timeout: float) -> None:
    """Read and drop the rest of the body, within :data:`DRAIN_BYTES` and ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not body.done and body.received <= DRAIN_BYTES:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":  # the client went away
            return
        body.note(message)


def _guarded_body(
    receive: Any, body: _Body, max_bytes: int, timeout: float
) -> Callable[[], Coroutine[Any, Any, Any]]:
    """``receive`` that stops a body at ``max_bytes`` (413) and a client that sends it too
    slowly (408: each part must arrive within ``timeout`` seconds). After the body, messages
    pass untouched (the disconnect watch waits on them for as long as a request runs)."""

    async def guarded() -> Any:
        if body.done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {timeout:g} s") from None
        if message["type"] == "http.request":
            body.note(message)
            if body.received > max_bytes:
                raise HTTPException(413, f"the request body is over the limit of {max_bytes} bytes")
        return message

    return guarded
