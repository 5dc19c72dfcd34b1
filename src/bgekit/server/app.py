"""The HTTP app: ``create_app(config)`` builds it; nothing loads until the app starts.

The parts: :mod:`~bgekit.server.state` (models, batchers, counters),
:mod:`~bgekit.server.middleware` (limits, metrics, errors, authentication) and
:mod:`~bgekit.server.routes` (the endpoints).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bgekit.errors import BgekitError
from bgekit.images import ImageTooLargeError
from bgekit.server.config import ServerConfig
from bgekit.server.middleware import ClientGone, LimitsMiddleware, error_response, validation_message
from bgekit.server.routes import add_routes
from bgekit.server.state import ServerState

if TYPE_CHECKING:
    from bgekit.index import Index
    from bgekit.models import Embedder, Reranker

logger = logging.getLogger(__name__)


def create_app(
    config: ServerConfig | None = None,
    *,
    embedder: Embedder | None = None,
    reranker: Reranker | None = None,
    index: Index | None = None,
) -> FastAPI:
    """The bgekit HTTP app. Models named in ``config`` load when the app starts (already
    loaded ones can be passed in); nothing happens at import or construction time. An image
    model passed in gets image limits at least as wide as the config's (its own are raised
    where they are narrower: the server checks every image itself)."""
    state = ServerState(config or ServerConfig(), embedder, reranker, index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(state.load)
        state.start()
        await state.warm_up()
        state.ready = True
        logger.info("server ready")
        try:
            yield
        finally:
            state.ready = False
            await run_in_threadpool(state.stop)  # finishes queued work first

    from bgekit import __version__

    app = FastAPI(
        title="bgekit",
        version=__version__,
        lifespan=lifespan,
        description="BGE embeddings (dense, sparse, multi-vector), reranking and search",
    )
    app.state.bgekit = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(422, message, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(ImageTooLargeError)
    async def _too_large(request: Request, exc: ImageTooLargeError) -> JSONResponse:
        return error_response(413, str(exc))  # over the byte or pixel limit, as a body over its limit

    @app.exception_handler(BgekitError)
    async def _bgekit(request: Request, exc: BgekitError) -> JSONResponse:
        return error_response(422, str(exc))  # bad input the library refused: one error type, one status

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; recorded in the metrics

    app.add_middleware(LimitsMiddleware, state=state)
    add_routes(app, state)
    return app
