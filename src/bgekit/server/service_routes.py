"""The service endpoints: health, readiness, metrics, ``/info`` and ``/admin/reload``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bgekit.server.schemas import ERROR_RESPONSES
from bgekit.server.state import ServerState


def add_service_routes(app: FastAPI, state: ServerState) -> None:
    """What operators and load balancers call, on ``app``."""
    cfg = state.config

    @app.post("/admin/reload", responses=ERROR_RESPONSES)
    async def reload() -> dict[str, Any]:
        """Serve the index's newest generation now (the server also looks every
        ``--index-poll`` seconds); a generation that does not load is refused and the one
        served stays."""
        watch = state.index_watch
        if watch is None:
            raise HTTPException(404, "this server serves no saved index (start it with --index)")
        result = await run_in_threadpool(watch.check, force=True)
        if result.error:
            raise HTTPException(422, result.error)
        index = state.index
        return {
            "generation": result.generation,
            "reloaded": result.reloaded,
            "documents": len(index) if index is not None else 0,
        }

    # -- service endpoints ----------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def index_info() -> dict[str, Any] | None:
        index = state.index
        if index is None:
            return None
        out = asdict(index.info())
        if state.index_watch is not None:
            out["reload_error"] = state.index_watch.error
        return out

    def served_models() -> list[dict[str, Any]]:
        """The models this server runs, as OpenAI's model list describes them."""
        loaded = [m for m in (state.embedder, state.reranker) if m is not None]
        return [{"id": m.info.name, "object": "model", "created": 0, "owned_by": "bgekit"} for m in loaded]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """OpenAI's ``GET /v1/models`` (clients and tools list models before they call)."""
        return {"object": "list", "data": served_models()}

    @app.get("/v1/models/{model:path}", responses=ERROR_RESPONSES)
    async def model(model: str) -> dict[str, Any]:
        found = next((m for m in served_models() if m["id"] == model), None)
        if found is None:
            raise HTTPException(404, f"this server does not run {model!r}")
        return found

    @app.get("/info")
    async def info() -> dict[str, Any]:
        from bgekit import __version__

        limits: dict[str, Any] = {
            "gather_tokens": cfg.gather_tokens,
            "max_concurrent_requests": cfg.max_concurrent_requests,
            "max_inputs_per_request": cfg.max_inputs_per_request,
            "over_token_limit": "truncate" if cfg.truncate else "413",
        }
        if state.embedder is not None:
            limits["max_input_tokens"] = {
                "query": state.embedder.input_limit("query"),
                "document": state.embedder.input_limit("document"),
            }
            limits["window_tokens"] = state.embedder.info.passage_max_length
            limits["long_input"] = state.embedder.info.long_input
            if "image" in state.embedder.info.modalities:
                policy = state.image_policy
                limits["max_image_bytes"] = policy.limits.max_bytes
                limits["max_image_pixels"] = policy.limits.max_pixels
                limits["image_urls"] = "fetched" if policy.allow_urls else "refused"
        if state.reranker is not None:
            limits["max_pair_tokens"] = state.reranker.max_pair_length
            limits["long_passage"] = state.reranker.long_passage
        tei: dict[str, Any] = {}  # text-embeddings-inference's /info keys, beside bgekit's
        if state.embedder is not None:
            tei = {
                "model_id": state.embedder.info.name,
                "model_type": {"embedding": {"pooling": state.embedder.info.pooling}},
                "max_input_length": state.embedder.info.passage_max_length,
            }
        elif state.reranker is not None:
            tei = {
                "model_id": state.reranker.info.name,
                "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
                "max_input_length": state.reranker.max_pair_length,
            }
        if tei:
            tei |= {
                "max_concurrent_requests": cfg.max_concurrent_requests,
                "max_batch_tokens": cfg.gather_tokens,
                "max_client_batch_size": cfg.max_inputs_per_request,
            }
        return {
            **tei,
            "version": __version__,
            "model": asdict(state.embedder.info) if state.embedder else None,
            "outputs": list(state.embedder.info.heads) if state.embedder else [],
            "reranker": asdict(state.reranker.info) if state.reranker else None,
            "index": index_info(),
            "auth": cfg.api_key is not None,
            "limits": limits,
            "engine": asdict(cfg.served_engine()),
            "compute": {
                "model": state.embedder.compute() if state.embedder else [],
                "reranker": state.reranker.compute() if state.reranker else [],
            },
        }
