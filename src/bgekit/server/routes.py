"""The HTTP routes: thin handlers over the library (policy lives in the library)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bgekit.scoring import truncate_dimensions
from bgekit.server.middleware import wait_or_drop
from bgekit.server.schemas import (
    ERROR_RESPONSES,
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
from bgekit.server.state import ServerState
from bgekit.types import EmbeddingRow, Hit, Kind, OutputKind


def _json(body: dict[str, Any]) -> Response:
    """JSON with numpy arrays written directly (no per-float Python objects): the response
    shapes are the pydantic models of :mod:`bgekit.server.schemas`, checked by the tests."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def add_routes(app: FastAPI, state: ServerState) -> None:
    """Every endpoint of the bgekit server, on ``app``."""
    cfg = state.config

    async def embed_rows(
        request: Request, texts: list[str], kind: Kind, outputs: Sequence[OutputKind]
    ) -> tuple[list[EmbeddingRow], int]:
        emb = state.need_embedder()
        wanted = emb.check_outputs(outputs)  # before queueing: a bad request never joins a batch
        state.check_count(len(texts), "input")
        limit = emb.info.query_max_length if kind == "query" else emb.info.passage_max_length
        texts = state.bound_chars(texts, limit, "input")
        seqs = await run_in_threadpool(emb.tokenize, texts, kind=kind)  # off the event loop
        state.check_lengths(seqs, limit, "input")
        assert state.embed_batcher is not None
        rows = await wait_or_drop(request, state.embed_batcher.submit(seqs, frozenset(wanted)))
        return rows, sum(len(s) for s in seqs)

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERROR_RESPONSES)
    async def openai_embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        emb = state.need_embedder()
        texts = body.input if isinstance(body.input, list) else [body.input]
        rows, tokens = await embed_rows(request, texts, body.input_type, ("dense",))
        dense = np.stack([r.dense for r in rows if r.dense is not None])
        if body.dimensions is not None:
            dense = truncate_dimensions(dense, body.dimensions, normalize=emb.info.normalize)
        data = []
        for i, vec in enumerate(dense):
            value: np.ndarray | str = vec
            if body.encoding_format == "base64":
                value = base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json({"object": "list", "data": data, "model": body.model or emb.info.name, "usage": usage})

    @app.post(
        "/embed", response_model=EmbedResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES
    )
    async def embed(body: EmbedRequest, request: Request) -> Response:
        emb = state.need_embedder()
        texts = body.inputs if isinstance(body.inputs, list) else [body.inputs]
        rows, tokens = await embed_rows(request, texts, body.kind, body.outputs)
        items = []
        for i, row in enumerate(rows):
            item: dict[str, Any] = {"index": i}
            if "dense" in body.outputs and row.dense is not None:
                item["dense"] = row.dense
            if "sparse" in body.outputs and row.sparse is not None:
                item["sparse"] = {"indices": row.sparse.indices, "values": row.sparse.values}
                if body.return_tokens:
                    item["sparse"]["tokens"] = [
                        emb.tokenizer.id_to_token(int(t)) or "" for t in row.sparse.indices
                    ]
            if "multivector" in body.outputs and row.multivector is not None:
                item["multivector"] = row.multivector
            items.append(item)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json({"data": items, "model": emb.info.name, "usage": usage})

    @app.post(
        "/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES
    )
    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        rr = state.need_reranker()
        texts = body.texts()
        state.check_count(len(texts), "documents")
        (query,) = state.bound_chars([body.query], rr.max_pair_length, "query")
        bounded = state.bound_chars(texts, rr.max_pair_length, "document")
        seqs = await run_in_threadpool(rr.tokenize, [(query, t) for t in bounded])
        state.check_lengths(seqs, rr.max_pair_length, "document")
        assert state.rerank_batcher is not None
        scores = await wait_or_drop(request, state.rerank_batcher.submit(seqs, None))
        tokens = sum(len(s) for s in seqs)
        order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[: body.top_n]
        results = [
            RerankItem(
                index=i,
                relevance_score=float(scores[i]),
                document=DocumentIn(text=texts[i]) if body.return_documents else None,
            )
            for i in order
        ]
        return RerankResponse(
            results=results,
            model=body.model or rr.info.name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @app.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES)
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        from bgekit.retrieval import HybridConfig, Pipeline

        if state.index is None:
            raise HTTPException(404, "this server has no index (start it with --index)")
        reranker = state.need_reranker() if body.rerank else None
        # the same length rule as every route: over the query limit is 413 unless truncating
        emb = state.index.embedder
        limit = emb.info.query_max_length
        (query,) = state.bound_chars([body.query], limit, "query")
        seqs = await run_in_threadpool(emb.tokenize, [query], kind="query")
        state.check_lengths(seqs, limit, "query")
        defaults = HybridConfig()
        hybrid = HybridConfig(
            weights=body.weights or defaults.weights,
            candidates=body.candidates or defaults.candidates,
            fusion=body.fusion,
        )
        pipe = Pipeline(None, state.index, reranker, retrieve=body.rerank_top, mode=body.mode, hybrid=hybrid)

        def run() -> list[Hit]:
            try:
                return pipe.search([query], body.k)[0]
            finally:
                state.trimmer.maybe_trim()

        hits = await run_in_threadpool(run)
        out = [SearchHit(**asdict(h)) for h in hits]
        return SearchResponse(hits=out, model=state.index.embedder.info.name)

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
                "query": state.embedder.info.query_max_length,
                "document": state.embedder.info.passage_max_length,
            }
        if state.reranker is not None:
            limits["max_pair_tokens"] = state.reranker.max_pair_length
        return {
            "version": __version__,
            "model": asdict(state.embedder.info) if state.embedder else None,
            "outputs": list(state.embedder.info.heads) if state.embedder else [],
            "reranker": asdict(state.reranker.info) if state.reranker else None,
            "index": asdict(state.index.info()) if state.index else None,
            "auth": cfg.api_key is not None,
            "limits": limits,
            "engine": asdict(cfg.served_engine()),
            "compute": {
                "model": state.embedder.compute() if state.embedder else [],
                "reranker": state.reranker.compute() if state.reranker else [],
            },
        }
