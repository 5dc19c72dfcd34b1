"""The HTTP routes: thin handlers over the library (policy lives in the library)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bgekit.images import Item
from bgekit.scoring import truncate_dimensions
from bgekit.server.cohere_embed import add_cohere_embed
from bgekit.server.config import LONGEST_TEXT_TOKENS
from bgekit.server.image_inputs import RawItem, ReadItems, bound_texts
from bgekit.server.middleware import wait_or_drop
from bgekit.server.responses import counted
from bgekit.server.responses import json_response as _json
from bgekit.server.schemas import (
    ERROR_RESPONSES,
    CohereRerankResponse,
    DocumentIn,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    ImageItem,
    RerankItem,
    RerankRequest,
    RerankResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    TeiEmbedRequest,
    TeiRerankItem,
    TeiRerankRequest,
    TeiSparseValue,
    TeiToken,
    TeiTokenizeRequest,
    Usage,
)
from bgekit.server.service_routes import add_service_routes
from bgekit.server.state import ServerState
from bgekit.types import EmbeddingRow, Hit, Kind, OutputKind, Outputs, TokenSeq


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def add_routes(app: FastAPI, state: ServerState) -> None:
    """Every endpoint of the bgekit server, on ``app``."""

    async def tokenized(
        items: Sequence[Item], kind: Kind, truncate: bool | None = None, task: str | None = None
    ) -> list[TokenSeq]:
        """The length rule of every embedding route: a cheap character bound, tokenising off
        the event loop, then the token limit (413, or cut when truncating). An image's slots
        are not text: only a text (a composed input's too) is bound and cut."""
        emb = state.need_embedder()
        state.check_count(len(items), "input")
        limit = emb.input_limit(kind) or LONGEST_TEXT_TOKENS
        items = bound_texts(items, lambda texts: state.bound_chars(texts, limit, "input", truncate))
        seqs = await run_in_threadpool(emb.tokenize, items, kind=kind, task=task)
        state.check_lengths(seqs, limit, "input", truncate)
        return seqs

    async def read_items(values: Sequence[str | ImageItem], what: str) -> ReadItems:
        """Texts and Jina's image items: every image fetched (if allowed), decoded and checked
        before anything of the request is queued (a bad one is 413 / 422 naming it)."""
        state.check_count(len(values), what)
        raw = [RawItem(text=v) if isinstance(v, str) else RawItem(v.text, v.image) for v in values]
        return await state.images.read(raw, what, state.need_embedder())

    async def embed_rows(
        request: Request,
        texts: Sequence[Item],
        kind: Kind,
        outputs: Sequence[OutputKind],
        truncate: bool | None = None,
        task: str | None = None,
    ) -> tuple[list[EmbeddingRow], int]:
        wanted = state.need_embedder().check_outputs(
            outputs
        )  # the one check; a bad request never joins a batch
        return await run_seqs(request, await tokenized(texts, kind, truncate, task), wanted)

    async def run_seqs(
        request: Request, seqs: list[TokenSeq], wanted: Outputs
    ) -> tuple[list[EmbeddingRow], int]:
        assert state.embed_batcher is not None
        rows = await wait_or_drop(request, state.embed_batcher.submit(seqs, wanted))
        request.state.long_counts = state.need_embedder().long_counts(seqs)
        return rows, sum(len(s) for s in seqs)

    async def embed_ids(
        request: Request, ids: list[list[int]], kind: Kind, task: str | None
    ) -> tuple[list[EmbeddingRow], int]:
        """Token-id input: checked against the vocabulary, framed by the special tokens."""
        emb = state.need_embedder()
        if kind == "query" or task is not None:
            raise HTTPException(422, "input_type query and task need text input (instructions are text)")
        state.check_count(len(ids), "input")
        vocab = emb.tokenizer.vocab_size
        for i, one in enumerate(ids):
            bad = next((t for t in one if not 0 <= t < vocab), None)
            if bad is not None:
                raise HTTPException(
                    422, f"input.{i}: token id {bad} is outside the vocabulary (0..{vocab - 1})"
                )
        limit = emb.input_limit("document") or LONGEST_TEXT_TOKENS
        seqs = emb.tokenize_ids(ids)
        state.check_lengths(seqs, limit, "input")
        return await run_seqs(request, seqs, Outputs(("dense",)))

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERROR_RESPONSES)
    async def openai_embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        emb = state.need_embedder()
        given = body.input if isinstance(body.input, list) else [body.input]
        if given and isinstance(given[0], list):
            rows, tokens = await embed_ids(request, given, body.input_type, body.task)
        else:
            read = await read_items(given, "input")  # type: ignore[arg-type]
            rows, tokens = await embed_rows(request, read.items, body.input_type, ("dense",), task=body.task)
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
        body_out = {"object": "list", "data": data, "model": body.model or emb.info.name, "usage": usage}
        return counted(_json(body_out), request)

    @app.post(
        "/encode", response_model=EmbedResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES
    )
    async def encode(body: EmbedRequest, request: Request) -> Response:
        emb = state.need_embedder()
        given = body.inputs if isinstance(body.inputs, list) else [body.inputs]
        read = await read_items(given, "inputs")
        rows, tokens = await embed_rows(request, read.items, body.kind, body.outputs, task=body.task)
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
        cut, chunked = request.state.long_counts
        out = {"data": items, "model": emb.info.name, "usage": usage, "truncated": cut, "chunked": chunked}
        return counted(_json(out), request)

    # -- text-embeddings-inference (TEI) routes and shapes ----------------------------------

    def tei_kind(body: TeiEmbedRequest) -> tuple[Kind, str | None]:
        if body.truncation_direction != "Right":
            raise HTTPException(
                422, "truncation_direction: only Right is supported (texts are cut at the end)"
            )
        return prompt_side(body.prompt_name)

    def prompt_side(name: str | None) -> tuple[Kind, str | None]:
        """TEI's ``prompt_name``: the side, and the task it names (its query instruction)."""
        if name in (None, "document", "passage"):
            return "document", None
        if name == "query":
            return "query", None
        if name in state.need_embedder().prompts.task_names:
            return "query", name
        tasks = "".join(f", {t}" for t in state.need_embedder().prompts.task_names)
        raise HTTPException(422, f"prompt_name {name!r} is unknown; use query, document{tasks}")

    async def tei_embed(body: TeiEmbedRequest, request: Request) -> Response:
        emb = state.need_embedder()
        if not body.normalize and emb.info.normalize:
            raise HTTPException(422, "normalize: this server gives normalised vectors only")
        kind, task = tei_kind(body)
        rows, _ = await embed_rows(request, body.texts(), kind, ("dense",), body.truncate, task)
        dense = np.stack([r.dense for r in rows if r.dense is not None])
        if body.dimensions is not None:
            dense = truncate_dimensions(dense, body.dimensions, normalize=emb.info.normalize)
        dumped = orjson.dumps(dense, option=orjson.OPT_SERIALIZE_NUMPY)
        return counted(Response(dumped, media_type="application/json"), request)

    @app.post("/embed", response_model=list[list[float]], responses=ERROR_RESPONSES, summary="Embed (TEI)")
    async def tei_embed_route(body: TeiEmbedRequest, request: Request) -> Response:
        """text-embeddings-inference's ``/embed``: one dense vector per input, ``[[float]]``."""
        return await tei_embed(body, request)

    @app.post(
        "/", response_model=list[list[float]], responses=ERROR_RESPONSES, summary="Embed (TEI's POST /)"
    )
    async def tei_root(body: TeiEmbedRequest, request: Request) -> Response:
        """TEI's ``POST /`` for an embedding model (what ``huggingface_hub``'s
        ``InferenceClient(model=URL).feature_extraction`` posts): as ``/embed``."""
        return await tei_embed(body, request)

    @app.post("/embed_all", response_model=list[list[list[float]]], responses=ERROR_RESPONSES)
    async def embed_all(body: TeiEmbedRequest, request: Request) -> Response:
        """TEI's ``/embed_all``: every token's last hidden state, ``[[[float]]]`` (no pooling).
        Runs beside the batcher, as a whole request."""
        kind, task = tei_kind(body)
        seqs = await tokenized(body.texts(), kind, body.truncate, task)
        states = await run_in_threadpool(state.need_embedder().token_states_of, seqs)
        state.trimmer.maybe_trim()
        request.state.long_counts = state.need_embedder().long_counts(seqs)
        dumped = orjson.dumps(states, option=orjson.OPT_SERIALIZE_NUMPY)
        return counted(Response(dumped, media_type="application/json"), request)

    @app.post("/embed_sparse", response_model=list[list[TeiSparseValue]], responses=ERROR_RESPONSES)
    async def embed_sparse(body: TeiEmbedRequest, request: Request) -> Response:
        """TEI's ``/embed_sparse``: the lexical weights, ``[[{index, value}]]`` (BGE-M3's head)."""
        kind, task = tei_kind(body)
        rows, _ = await embed_rows(request, body.texts(), kind, ("sparse",), body.truncate, task)
        out = [
            [
                {"index": int(i), "value": float(v)}
                for i, v in zip(r.sparse.indices, r.sparse.values, strict=True)
            ]
            for r in rows
            if r.sparse is not None
        ]
        return Response(orjson.dumps(out), media_type="application/json")

    async def ranked(
        query: str, texts: list[str], top_n: int | None, request: Request, truncate: bool | None = None
    ) -> tuple[list[int], list[float], int]:
        """Document positions best first (``top_n`` of them), every document's logit, tokens."""
        rr = state.need_reranker()
        state.check_count(len(texts), "documents")
        (query,) = state.bound_chars([query], rr.max_pair_length, "query", truncate)
        # passages scored as windows may be long: the bound is then the longest text accepted
        doc_limit = rr.max_pair_length if rr.long_passage == "truncate" else LONGEST_TEXT_TOKENS
        bounded = state.bound_chars(texts, doc_limit, "document", truncate)
        plan = await run_in_threadpool(rr.prepare, [(query, t) for t in bounded])
        state.check_lengths(plan.seqs, rr.max_pair_length, "document", truncate)
        assert state.rerank_batcher is not None
        window_scores = await wait_or_drop(request, state.rerank_batcher.submit(plan.seqs, None))
        scores = plan.combine(np.asarray(window_scores, dtype=np.float32)).tolist()
        order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:top_n]
        return order, scores, sum(len(s) for s in plan.seqs)

    def items(
        body: RerankRequest, order: list[int], scores: list[float], documents: bool
    ) -> list[RerankItem]:
        texts = body.texts()
        return [
            RerankItem(
                index=i,
                relevance_score=float(scores[i]),
                document=DocumentIn(text=texts[i]) if documents else None,
            )
            for i in order
        ]

    @app.post(
        "/rerank",
        response_model=RerankResponse | list[TeiRerankItem],
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
    )
    async def rerank(body: RerankRequest | TeiRerankRequest, request: Request) -> Response | RerankResponse:
        """Cohere / Jina's request shape (``documents``), or text-embeddings-inference's
        (``texts``, answered as TEI does: ``[{index, score, text?}]``, best first)."""
        if isinstance(body, TeiRerankRequest):
            if body.truncation_direction != "Right":
                raise HTTPException(422, "truncation_direction: only Right is supported")
            order, logits, _ = await ranked(body.query, body.texts, None, request, body.truncate)
            out = []
            for i in order:
                item: dict[str, Any] = {
                    "index": i,
                    "score": logits[i] if body.raw_scores else _sigmoid(logits[i]),
                }
                if body.return_text:
                    item["text"] = body.texts[i]
                out.append(item)
            return Response(orjson.dumps(out), media_type="application/json")
        order, scores, tokens = await ranked(body.query, body.texts(), body.top_n, request)
        return RerankResponse(
            results=items(body, order, scores, body.return_documents),
            model=body.model or state.need_reranker().info.name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    def cohere_route(version: str) -> None:
        @app.post(
            f"/{version}/rerank",
            response_model=CohereRerankResponse,
            response_model_exclude_none=True,
            responses=ERROR_RESPONSES,
            summary=f"Rerank, Cohere's {version} API (and Jina's /v1/rerank)",
        )
        async def cohere_rerank(body: RerankRequest, request: Request) -> CohereRerankResponse:
            """Cohere's request and response shapes; ``relevance_score`` is the sigmoid of the
            cross-encoder's logit (0..1, as Cohere's and Jina's are)."""
            order, logits, tokens = await ranked(body.query, body.texts(), body.top_n, request)
            probs = [_sigmoid(x) for x in logits]
            return CohereRerankResponse(
                id=str(uuid.uuid4()),
                results=items(body, order, probs, body.return_documents and version == "v1"),
                meta={"api_version": {"version": version[1:]}, "billed_units": {"search_units": 1}},
                model=body.model or state.need_reranker().info.name,
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            )

    cohere_route("v1")
    cohere_route("v2")

    @app.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES)
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        from bgekit.retrieval import Filter, HybridConfig, Pipeline

        index = state.index  # this request's, even if a newer generation is served meanwhile
        if index is None:
            raise HTTPException(404, "this server has no index (start it with --index)")
        where = Filter.parse(body.filter)
        reranker = state.need_reranker() if body.rerank else None
        # the same length rule as every route: over the query limit is 413 unless truncating
        emb = index.embedder
        limit = emb.info.query_max_length
        text = None if body.query is None else state.bound_chars([body.query], limit, "query")[0]
        raw = [RawItem(text, body.image)]  # a text, an image, or both: one composed query
        (query,) = (await state.images.read(raw, "query", emb, labels=["image"])).items
        seqs = await run_in_threadpool(index.tokenize_queries, [query])  # tokenised once, here
        state.check_lengths(seqs, limit, "query")
        defaults = HybridConfig()
        hybrid = HybridConfig(
            weights=body.weights or defaults.weights,
            candidates=body.candidates or defaults.candidates,
            fusion=body.fusion,
        )
        pipe = Pipeline(
            None,
            index,
            reranker,
            retrieve=body.rerank_top,
            mode=body.mode,
            hybrid=hybrid,
            rerank_weight=body.rerank_weight,
        )

        def run() -> list[Hit]:
            try:
                return pipe.search([query], body.k, tokens=seqs, where=where)[0]
            finally:
                state.trimmer.maybe_trim()

        hits = await run_in_threadpool(run)
        out = [SearchHit(**asdict(h)) for h in hits]
        return SearchResponse(hits=out, model=emb.info.name)

    @app.post("/tokenize", response_model=list[list[TeiToken]], responses=ERROR_RESPONSES)
    async def tokenize(body: TeiTokenizeRequest) -> Response:
        """text-embeddings-inference's ``/tokenize``: each text's tokens with their ids,
        character spans (none for special tokens) and whether they are special."""
        emb = state.need_embedder()
        texts = body.texts()
        state.check_count(len(texts), "inputs")
        kind, task = prompt_side(body.prompt_name)
        texts = emb.prompts.apply(texts, kind, task=task)
        texts = state.bound_chars(texts, emb.info.passage_max_length, "inputs")
        tokens = await run_in_threadpool(emb.tokenizer.tokens, texts, body.add_special_tokens)
        return Response(orjson.dumps(tokens), media_type="application/json")

    add_cohere_embed(app, state, embed_rows)
    add_service_routes(app, state)
