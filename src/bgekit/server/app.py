"""The HTTP app: ``create_app(config)`` builds it; nothing loads until the app starts."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bgekit.errors import BgekitError
from bgekit.server.batcher import Batcher
from bgekit.server.config import ServerConfig
from bgekit.server.metrics import Metrics
from bgekit.server.schemas import (
    DocumentIn,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    RerankItem,
    RerankRequest,
    RerankResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    Usage,
)
from bgekit.types import OUTPUT_KINDS, Kind, OutputKind, SparseVec, TokenSeq

if TYPE_CHECKING:
    from bgekit.index import Index
    from bgekit.models import Embedder, Reranker

logger = logging.getLogger(__name__)
EmbedRow = tuple[np.ndarray | None, SparseVec | None, np.ndarray | None]
_OPEN_PATHS = {"/health", "/ready", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


class _ClientGone(Exception):
    """The client disconnected before its result was ready."""


class ServerState:
    """The models, their batchers and the server's counters."""

    def __init__(
        self,
        config: ServerConfig,
        embedder: Embedder | None,
        reranker: Reranker | None,
        index: Index | None,
    ):
        self.config = config
        self.embedder = embedder
        self.reranker = reranker
        self.index = index
        self.metrics = Metrics()
        self.ready = False
        self.in_flight = 0
        self.embed_batcher: Batcher[frozenset[str]] | None = None
        self.rerank_batcher: Batcher[None] | None = None

    # -- start and stop ------------------------------------------------------------------

    def load(self) -> None:
        """Load what the config names and was not passed in (runs once, at start-up)."""
        from bgekit.engine import EngineConfig
        from bgekit.models import Embedder, EmbedderSettings, Reranker

        cfg = self.config
        engine = EngineConfig(device=cfg.device, dtype=cfg.dtype, progress=False)  # type: ignore[arg-type]
        limit = cfg.max_input_tokens
        # With nothing named or passed in, the packaged model is served (as `bgekit serve` says).
        nothing = not cfg.reranker and self.reranker is None
        if self.embedder is None and (cfg.model or cfg.index or nothing):
            from bgekit.models.packaged import packaged_model_dir

            settings = EmbedderSettings(query_max_length=limit, passage_max_length=limit)
            name = cfg.model or str(packaged_model_dir())
            self.embedder = Embedder.from_pretrained(name, settings=settings, engine=engine)
        if self.reranker is None and cfg.reranker:
            self.reranker = Reranker.from_pretrained(cfg.reranker, max_length=limit, engine=engine)
        if self.index is None and cfg.index:
            from bgekit.index import Index

            self.index = Index.load(cfg.index, self.embedder)

    def start(self) -> None:
        budget = self.config.max_batch_tokens
        if self.embedder is not None:
            self.embed_batcher = Batcher(
                self._run_embed,
                max_batch_tokens=budget,
                name="embedder",
                on_batch=self.metrics.batch_observer("embedder"),
            )
            self.embed_batcher.start()
        if self.reranker is not None:
            self.rerank_batcher = Batcher(
                self._run_rerank,
                max_batch_tokens=budget,
                name="reranker",
                on_batch=self.metrics.batch_observer("reranker"),
            )
            self.rerank_batcher.start()

    def stop(self) -> None:
        for b in (self.embed_batcher, self.rerank_batcher):
            if b is not None:
                b.stop()

    async def warm_up(self) -> None:
        """One tiny request through every model, so the first client does not pay for it."""
        if self.embedder is not None and self.embed_batcher is not None:
            seqs = self.embedder.tokenize(["warm up"])
            await self.embed_batcher.submit(seqs, frozenset(self.embedder.info.heads))
        if self.reranker is not None and self.rerank_batcher is not None:
            await self.rerank_batcher.submit(self.reranker.tokenize([("warm", "up")]), None)

    # -- model runs (on the batcher threads) ---------------------------------------------

    def _run_embed(self, seqs: list[TokenSeq], options: list[frozenset[str]]) -> list[EmbedRow]:
        assert self.embedder is not None
        wanted = set().union(*options)
        outputs: tuple[OutputKind, ...] = tuple(o for o in OUTPUT_KINDS if o in wanted)
        enc = self.embedder.encode_tokens(seqs, outputs=outputs)
        return [
            (
                enc.dense[i] if enc.dense is not None else None,
                enc.sparse[i] if enc.sparse is not None else None,
                enc.multivector[i] if enc.multivector is not None else None,
            )
            for i in range(len(seqs))
        ]

    def _run_rerank(self, seqs: list[TokenSeq], options: list[None]) -> list[float]:
        assert self.reranker is not None
        return self.reranker.score_tokens(seqs).tolist()

    # -- helpers for the handlers --------------------------------------------------------

    def need_embedder(self) -> Embedder:
        if self.embedder is None:
            raise HTTPException(404, "this server runs no embedder")
        return self.embedder

    def need_reranker(self) -> Reranker:
        if self.reranker is None:
            raise HTTPException(404, "this server runs no reranker (start it with --reranker)")
        return self.reranker

    def check_lengths(self, seqs: Sequence[TokenSeq], limit: int, what: str) -> None:
        if self.config.truncate:
            return
        for i, s in enumerate(seqs):
            if s.truncated:
                raise HTTPException(
                    413,
                    f"{what} {i} is longer than {limit} tokens (the server is set to refuse, not truncate)",
                )

    def check_count(self, n: int, field: str) -> None:
        if n > self.config.max_inputs_per_request:
            raise HTTPException(
                413,
                f"{field} holds {n} items; this server takes at most {self.config.max_inputs_per_request}",
            )


async def _wait_or_drop(request: Request, work: Awaitable[list[Any]]) -> list[Any]:
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
    raise _ClientGone


class _LimitsMiddleware:
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
            busy = _error(
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
                await _error(500, "internal server error")(scope, receive, send_and_note)
        finally:
            if counted:
                state.in_flight -= 1
                state.metrics.in_flight.dec()
            state.metrics.requests.labels(path, str(status["code"])).inc()
            state.metrics.latency.labels(path).observe(time.perf_counter() - start)
            for name, b in (("embedder", state.embed_batcher), ("reranker", state.rerank_batcher)):
                if b is not None:
                    state.metrics.queue_depth.labels(name).set(b.depth)


def _json(body: dict[str, Any]) -> Response:
    """JSON with numpy arrays written directly (no per-float Python objects): the response
    shapes are the pydantic models of :mod:`bgekit.server.schemas`, checked by the tests."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _error(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param,
            "code": status,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
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


def create_app(
    config: ServerConfig | None = None,
    *,
    embedder: Embedder | None = None,
    reranker: Reranker | None = None,
    index: Index | None = None,
) -> FastAPI:
    """The bgekit HTTP app. Models named in ``config`` load when the app starts (already
    loaded ones can be passed in); nothing happens at import or construction time."""
    cfg = config or ServerConfig()
    state = ServerState(cfg, embedder, reranker, index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(state.load)
        state.start()
        await state.warm_up()
        state.ready = True
        logger.info("bgekit server ready")
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

    # -- errors ------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(422, message, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(BgekitError)
    async def _bgekit(request: Request, exc: BgekitError) -> JSONResponse:
        return _error(422, str(exc))

    # -- limits, metrics and auth ---------------------------------------------------------------

    @app.exception_handler(_ClientGone)
    async def _gone(request: Request, exc: _ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; recorded in the metrics

    app.add_middleware(_LimitsMiddleware, state=state)

    async def auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("x-api-key")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        if given is None or not secrets.compare_digest(given.encode(), cfg.api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key (send 'Authorization: Bearer KEY')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    protected = [Depends(auth)]

    # -- embeddings ----------------------------------------------------------------------------------

    async def embed_rows(
        request: Request, texts: list[str], kind: Kind, outputs: frozenset[str]
    ) -> tuple[list[EmbedRow], int]:
        emb = state.need_embedder()
        state.check_count(len(texts), "input")
        seqs = emb.tokenize(texts, kind=kind)
        limit = emb.info.query_max_length if kind == "query" else emb.info.passage_max_length
        state.check_lengths(seqs, limit, "input")
        assert state.embed_batcher is not None
        rows = await _wait_or_drop(request, state.embed_batcher.submit(seqs, outputs))
        return rows, sum(len(s) for s in seqs)

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, dependencies=protected)
    async def openai_embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        emb = state.need_embedder()
        dim = emb.info.hidden_size
        if body.dimensions is not None and body.dimensions > dim:
            raise HTTPException(422, f"dimensions {body.dimensions} exceeds the model's {dim}")
        texts = body.input if isinstance(body.input, list) else [body.input]
        rows, tokens = await embed_rows(request, texts, body.input_type, frozenset({"dense"}))
        data = []
        for i, (dense, _, _) in enumerate(rows):
            assert dense is not None
            vec = np.asarray(dense, dtype=np.float32)
            if body.dimensions is not None and body.dimensions < dim:
                vec = vec[: body.dimensions]
                if emb.info.normalize:
                    vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            value: np.ndarray | str = vec
            if body.encoding_format == "base64":
                value = base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json({"object": "list", "data": data, "model": body.model or emb.info.name, "usage": usage})

    @app.post(
        "/embed", response_model=EmbedResponse, response_model_exclude_none=True, dependencies=protected
    )
    async def embed(body: EmbedRequest, request: Request) -> Response:
        emb = state.need_embedder()
        missing = [o for o in body.outputs if o not in emb.info.heads]
        if missing:
            raise HTTPException(
                422,
                f"outputs: {emb.info.name} has no {', '.join(missing)} head; it gives {', '.join(emb.info.heads)}",
            )
        texts = body.inputs if isinstance(body.inputs, list) else [body.inputs]
        rows, tokens = await embed_rows(request, texts, body.kind, frozenset(body.outputs))
        wanted = set(body.outputs)
        items = []
        for i, (dense, sparse, multi) in enumerate(rows):
            item: dict[str, Any] = {"index": i}
            if "dense" in wanted and dense is not None:
                item["dense"] = dense
            if "sparse" in wanted and sparse is not None:
                item["sparse"] = {"indices": sparse.indices, "values": sparse.values}
                if body.return_tokens:
                    item["sparse"]["tokens"] = [
                        emb.tokenizer.id_to_token(int(t)) or "" for t in sparse.indices
                    ]
            if "multivector" in wanted and multi is not None:
                item["multivector"] = multi
            items.append(item)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json({"data": items, "model": emb.info.name, "usage": usage})

    # -- rerank and search ------------------------------------------------------------------------

    async def rerank_scores(request: Request, query: str, texts: list[str]) -> tuple[list[float], int]:
        rr = state.need_reranker()
        state.check_count(len(texts), "documents")
        seqs = rr.tokenize([(query, t) for t in texts])
        state.check_lengths(seqs, rr.info.passage_max_length, "document")
        assert state.rerank_batcher is not None
        scores = await _wait_or_drop(request, state.rerank_batcher.submit(seqs, None))
        return scores, sum(len(s) for s in seqs)

    @app.post(
        "/rerank", response_model=RerankResponse, response_model_exclude_none=True, dependencies=protected
    )
    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        texts = body.texts()
        scores, tokens = await rerank_scores(request, body.query, texts)
        order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[: body.top_n]
        results = [
            RerankItem(
                index=i,
                relevance_score=float(scores[i]),
                document=DocumentIn(text=texts[i]) if body.return_documents else None,
            )
            for i in order
        ]
        assert state.reranker is not None
        return RerankResponse(
            results=results,
            model=body.model or state.reranker.info.name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @app.post("/search", response_model=SearchResponse, dependencies=protected)
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        from bgekit.retrieval import HybridConfig, Pipeline

        if state.index is None:
            raise HTTPException(404, "this server has no index (start it with --index)")
        reranker = state.need_reranker() if body.rerank else None
        defaults = HybridConfig()
        hybrid = HybridConfig(
            weights=body.weights or defaults.weights,
            candidates=body.candidates or defaults.candidates,
            fusion=body.fusion,
        )
        pipe = Pipeline(None, state.index, reranker, retrieve=body.rerank_top, mode=body.mode, hybrid=hybrid)
        hits = (await run_in_threadpool(pipe.search, [body.query], body.k))[0]
        out = [SearchHit(**{k2: v for k2, v in asdict(h).items()}) for h in hits]
        return SearchResponse(hits=out, model=state.index.embedder.info.name)

    # -- service endpoints ----------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", dependencies=protected)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", dependencies=protected)
    async def info() -> dict[str, Any]:
        limits: dict[str, Any] = {
            "max_batch_tokens": cfg.max_batch_tokens,
            "max_concurrent_requests": cfg.max_concurrent_requests,
            "max_inputs_per_request": cfg.max_inputs_per_request,
            "over_token_limit": "truncate" if cfg.truncate else "413",
        }
        if state.embedder is not None:
            limits["max_input_tokens"] = {
                "query": state.embedder.info.query_max_length,
                "document": state.embedder.info.passage_max_length,
            }
        if state.reranker is not None:
            limits["max_pair_tokens"] = state.reranker.info.passage_max_length
        return {
            "version": __version__,
            "model": asdict(state.embedder.info) if state.embedder else None,
            "outputs": list(state.embedder.info.heads) if state.embedder else [],
            "reranker": asdict(state.reranker.info) if state.reranker else None,
            "index": asdict(state.index.info()) if state.index else None,
            "auth": cfg.api_key is not None,
            "limits": limits,
            "compute": {
                "model": state.embedder.compute() if state.embedder else [],
                "reranker": state.reranker.compute() if state.reranker else [],
            },
        }

    return app
