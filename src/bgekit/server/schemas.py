"""Request and response bodies (pydantic): OpenAI embeddings, bgekit's /embed,
Cohere/Jina-style /rerank, and /search."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from bgekit.types import Kind, OutputKind, SearchMode

Texts = str | list[str]


def _texts(value: Texts) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not items:
        raise ValueError("must hold at least one text")
    for i, t in enumerate(items):
        if not t.strip():
            raise ValueError(f"text {i} is empty")
    return items


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("query is empty")
    return v


Query = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


def _dense_only() -> list[OutputKind]:
    return ["dense"]


class EmbeddingsRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``. ``input_type`` (an extension) marks queries, which
    get the model's query instruction; OpenAI clients leave it unset (documents)."""

    model_config = ConfigDict(extra="ignore")
    input: Texts
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    input_type: Kind = "document"

    @field_validator("input")
    @classmethod
    def _check_input(cls, v: Texts) -> list[str]:
        return _texts(v)


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class EmbedRequest(BaseModel):
    """bgekit's ``POST /embed``: any of the model's outputs from one forward pass."""

    model_config = ConfigDict(extra="forbid")
    inputs: Texts
    kind: Kind = "document"
    outputs: list[OutputKind] = Field(default_factory=_dense_only, min_length=1)
    return_tokens: bool = False

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, v: Texts) -> list[str]:
        return _texts(v)


class SparseOut(BaseModel):
    indices: list[int]
    values: list[float]
    tokens: list[str] | None = None


class EmbedItem(BaseModel):
    index: int
    dense: list[float] | None = None
    sparse: SparseOut | None = None
    multivector: list[list[float]] | None = None


class EmbedResponse(BaseModel):
    data: list[EmbedItem]
    model: str
    usage: Usage


class DocumentIn(BaseModel):
    text: str


class RerankRequest(BaseModel):
    """Cohere / Jina ``POST /rerank``."""

    model_config = ConfigDict(extra="ignore")
    query: Query
    documents: list[str | DocumentIn] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    model: str | None = None

    @field_validator("documents")
    @classmethod
    def _check_documents(cls, v: list[str | DocumentIn]) -> list[str | DocumentIn]:
        for i, d in enumerate(v):
            if not (d if isinstance(d, str) else d.text).strip():
                raise ValueError(f"document {i} is empty")
        return v

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankItem(BaseModel):
    index: int
    relevance_score: float
    document: DocumentIn | None = None


class RerankResponse(BaseModel):
    results: list[RerankItem]
    model: str
    usage: Usage


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Query
    k: int = Field(default=10, ge=1, le=1000)
    mode: SearchMode = "hybrid"
    weights: tuple[float, float, float] | None = None
    candidates: int | None = Field(default=None, ge=1)
    fusion: Literal["auto", "weighted", "rrf"] = "auto"
    rerank: bool = False
    rerank_top: int = Field(default=50, ge=1, le=1000)


class SearchHit(BaseModel):
    id: str
    score: float
    text: str
    title: str = ""
    chunk: int = 0
    scores: dict[str, float] = Field(default_factory=dict)
    metadata: dict[str, object] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    model: str
