"""Limits, metrics, errors and authentication around every route."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from bgekit.server.state import ServerState

logger = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected before its result was ready."""


async def wait_or_drop(request: Request, work: Awaitable[list[Any]]) -> list[Any]:
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
    """Pydantic's errors as one line naming each field, and the first field."""
    parts = []
    param = None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # Drop pydantic's union-branch labels (``str``, ``list[str]``) from the field path.
        loc = [x for x in loc if not x.startswith(("str", "list[", "function-after"))]
        field = ".".join(loc) or "body"
        param = param or field
        parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(parts)), param


class LimitsMiddleware:
    """Concurrency limit (429 + Retry-After), request metrics, and 500 for server faults.
    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs a task and a stream
    per request, which shows at high request rates."""

    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, path = self.state, scope["path"]
        limit = state.config.max_concurrent_requests
        start = time.perf_counter()
        counted = scope["method"] == "POST"
        if counted and state.in_flight >= limit:
            state.metrics.requests.labels(path, "429").inc()
            busy = error_response(
                429, f"more than {limit} requests in flight; retry shortly", headers={"Retry-After": "1"}
            )
            await busy(scope, receive, send)
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
            await self.app(scope, receive, send_and_note)
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


def api_key_check(api_key: str | None) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A route dependency: 401 unless the request carries ``api_key`` (Bearer or x-api-key)."""

    async def auth(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key (send 'Authorization: Bearer KEY')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return auth
