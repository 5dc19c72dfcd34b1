"""Cohere's ``POST /v2/embed`` (what ``cohere.ClientV2.embed`` posts): ``texts``, ``images``
(data URIs) or ``inputs`` (content parts: ``text`` and ``image_url``; a text and an image in
one input are one composed input), answered in Cohere's ``embeddings_by_type`` shape.

``input_type`` ``search_query`` is the query side (the model's query instruction); the
others (``search_document``, ``classification``, ``clustering``, ``image``) the document
side. ``embedding_types``: ``float``, ``base64`` (the float32 bytes, little-endian),
``binary`` / ``ubinary`` (one bit per dimension, set where the value is positive, packed 8 to
a byte, most significant first; ``binary`` less 128, as signed bytes); ``int8`` / ``uint8``
are refused: their scale comes from calibration data this server does not have.
``truncate``: ``END`` cuts long texts, ``NONE`` answers 413, unset follows the server's rule.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.exceptions import HTTPException

from bgekit.images import Item, text_of
from bgekit.scoring import truncate_dimensions
from bgekit.server.image_inputs import RawItem
from bgekit.server.responses import counted, json_response
from bgekit.server.schemas import ERROR_RESPONSES, InputText, Text
from bgekit.server.state import ServerState
from bgekit.types import EmbeddingRow, Kind, OutputKind

EmbedRows = Callable[..., Awaitable[tuple[list[EmbeddingRow], int]]]
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]


class CohereImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")  # ``detail`` changes nothing here
    url: Text


class CohereContent(BaseModel):
    """One part of an input: ``{"type": "text", "text": ...}`` or
    ``{"type": "image_url", "image_url": {"url": ...}}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: InputText | None = None
    image_url: CohereImageUrl | None = None

    @model_validator(mode="after")
    def _filled(self) -> CohereContent:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs 'image_url': {'url': ...}")
        return self


class CohereInput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: list[CohereContent] = Field(min_length=1)


def _float() -> list[EmbeddingType]:
    return ["float"]


class CohereEmbedRequest(BaseModel):
    """Cohere's v2 embed request (``max_tokens`` is refused: the model's limit applies;
    ``priority`` is ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: Text | None = None
    input_type: Literal["search_document", "search_query", "classification", "clustering", "image"]
    texts: list[InputText] | None = Field(None, min_length=1)
    images: list[Text] | None = Field(None, min_length=1)
    inputs: list[CohereInput] | None = Field(None, min_length=1)
    max_tokens: StrictInt | None = None
    output_dimension: StrictInt | None = Field(None, ge=1)
    embedding_types: list[EmbeddingType] = Field(default_factory=_float, min_length=1)
    truncate: Literal["NONE", "START", "END"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CohereEmbedRequest:
        given = [n for n in ("texts", "images", "inputs") if getattr(self, n) is not None]
        if len(given) != 1:
            also = f", not {' and '.join(given)}" if given else ""
            raise ValueError(f"give one of texts, images or inputs{also}")
        return self


class CohereImageInfo(BaseModel):
    width: int
    height: int
    format: str
    bit_depth: int


class CohereEmbedResponse(BaseModel):
    id: str
    embeddings: dict[str, list[Any]]
    texts: list[str]
    images: list[CohereImageInfo] | None = None
    meta: dict[str, Any]
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"


def raw_items(body: CohereEmbedRequest) -> tuple[list[RawItem], str]:
    """The request's inputs and the field they came from."""
    if body.texts is not None:
        return [RawItem(text=t) for t in body.texts], "texts"
    if body.images is not None:
        return [RawItem(image=url) for url in body.images], "images"
    out = []
    for i, one in enumerate(body.inputs or ()):
        texts = [c.text for c in one.content if c.type == "text" and c.text is not None]
        urls = [c.image_url.url for c in one.content if c.type == "image_url" and c.image_url is not None]
        if len(urls) > 1:
            raise HTTPException(422, f"inputs[{i}] holds {len(urls)} images; a BGE model reads one per input")
        # several text parts read as one text, in order
        out.append(RawItem(" ".join(texts) if texts else None, urls[0] if urls else None))
    return out, "inputs"


def by_type(dense: np.ndarray, kind: str) -> list[Any]:
    """The vectors in one of Cohere's embedding types (see the module)."""
    if kind == "float":
        return list(dense)
    if kind == "base64":
        return [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in dense]
    bits = np.packbits(dense > 0, axis=-1)
    return list(bits) if kind == "ubinary" else list((bits.astype(np.int16) - 128).astype(np.int8))


def add_cohere_embed(app: FastAPI, state: ServerState, embed_rows: EmbedRows) -> None:
    """``POST /v2/embed`` on ``app``; ``embed_rows(request, items, kind, outputs, truncate)``
    runs tokenised items through the shared batcher (the routes' own)."""

    @app.post(
        "/v2/embed",
        response_model=CohereEmbedResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        summary="Embed, Cohere's v2 API (texts, images, mixed inputs)",
    )
    async def cohere_embed(body: CohereEmbedRequest, request: Request) -> Response:
        emb = state.need_embedder()
        if body.max_tokens is not None:
            raise HTTPException(422, "max_tokens: not supported; the model's limit applies (see /info)")
        if body.truncate == "START":
            raise HTTPException(422, "truncate: START is not supported (texts are cut at the end: END)")
        refused = [t for t in body.embedding_types if t in ("int8", "uint8")]
        if refused:
            raise HTTPException(
                422,
                f"embedding_types: {refused[0]} needs calibration ranges this server does not have; "
                "ask for float, base64, binary or ubinary",
            )
        raw, what = raw_items(body)
        state.check_count(len(raw), what)
        read = await state.images.read(raw, what, emb)
        kind: Kind = "query" if body.input_type == "search_query" else "document"
        truncate = None if body.truncate is None else body.truncate == "END"
        outputs: Sequence[OutputKind] = ("dense",)
        rows, tokens = await embed_rows(request, read.items, kind, outputs, truncate)
        dense = np.stack([r.dense for r in rows if r.dense is not None])
        if body.output_dimension is not None:
            dense = truncate_dimensions(dense, body.output_dimension, normalize=emb.info.normalize)
        items: list[Item] = read.items
        out: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "embeddings": {t: by_type(dense, t) for t in dict.fromkeys(body.embedding_types)},
            "texts": [] if what == "images" else [text_of(x) for x in items],
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"input_tokens": tokens, "images": len(read.images)},
            },
            "response_type": "embeddings_by_type",
        }
        if read.images:
            out["images"] = [asdict(info) for info in read.images]
        return counted(json_response(out), request)
