"""Request and response bodies (pydantic): OpenAI embeddings, bgekit's /embed,
Cohere/Jina-style /rerank, and /search.

Every text field must be valid Unicode (a lone surrogate such as ``"\\ud800"`` is valid JSON
but not text) and input texts must not be blank; numbers and booleans are strict (``"5"``
is not 5); weights are finite. Breaking a rule answers 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from bgekit.types import Kind, OutputKind, SearchMode


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"holds a lone surrogate at character {e.start} (not valid Unicode)") from None
    return value


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("is empty")
    return v


# Any text a client sends (echoed fields too); an input text also must not be blank.
Text = Annotated[str, AfterValidator(_unicode)]
InputText = Annotated[
    str,
    Field(min_length=1, description="non-blank text (the HTTP API refuses empty strings)"),
    AfterValidator(_unicode),
    AfterValidator(_not_blank),
]
Texts = InputText | list[InputText]
TokenIds = Annotated[
    list[StrictInt], Field(min_length=1, description="the model's own token ids of one text")
]
Query = InputText
Weight = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


class ImageItem(BaseModel):
    """Jina's input item (on ``/v1/embeddings`` and ``/encode``): ``{"image": ...}``,
    ``{"text": ...}`` or both (a composed input). ``image``: base64, a ``data:image/...``
    URI, or an http(s) URL when the server fetches them (``--allow-image-urls``)."""

    model_config = ConfigDict(extra="forbid")
    text: InputText | None = None
    image: Text | None = None

    @model_validator(mode="after")
    def _something(self) -> ImageItem:
        if self.text is None and self.image is None:
            raise ValueError("an item needs 'image', 'text' or both")
        return self


Items = InputText | list[InputText | ImageItem]


def _texts(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not items:
        raise ValueError("must hold at least one text")
    return items


def _dense_only() -> list[OutputKind]:
    return ["dense"]


class EmbeddingsRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``. ``input_type`` (an extension) marks queries, which
    get the model's query instruction; OpenAI clients leave it unset (documents). ``task``
    (an extension) picks both sides' instructions from the model's task table. An image
    model also takes Jina's items in the list (:class:`ImageItem`)."""

    model_config = ConfigDict(extra="ignore")
    input: Items | TokenIds | list[TokenIds]
    model: Text | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: Text | None = None
    input_type: Kind = "document"
    task: Text | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, v: Any) -> Any:
        """One shape for the union below: texts (and image items), or lists of token ids
        (OpenAI's and vLLM's token input: the model's own ids, without special tokens).
        An empty text is one error here (the union below would report it once per shape)."""
        if isinstance(v, str) and not v.strip():
            raise ValueError("is an empty text (the HTTP API refuses empty and whitespace-only strings)")
        if isinstance(v, list):
            blank = next((i for i, x in enumerate(v) if isinstance(x, str) and not x.strip()), None)
            if blank is not None:
                raise ValueError(
                    f"item {blank} is an empty text (the HTTP API refuses empty and whitespace-only strings)"
                )
        if isinstance(v, list) and v:
            if all(type(x) is int for x in v):
                return [v]
            kinds = {
                "text" if isinstance(x, (str, dict)) else "ids" if isinstance(x, list) else "other" for x in v
            }
            if len(kinds) > 1 or "other" in kinds:
                raise ValueError(
                    "must be a string, a list of strings (or image items), a list of token ids "
                    "or a list of such lists"
                )
        return v

    @field_validator("input")
    @classmethod
    def _check_input(
        cls, v: str | list[str | ImageItem] | list[list[int]]
    ) -> list[str | ImageItem] | list[list[int]]:
        if isinstance(v, list) and v and isinstance(v[0], list):
            return v
        return _texts(v)  # type: ignore[arg-type,return-value]


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
    """bgekit's ``POST /encode``: any of the model's outputs from one forward pass (an image
    model also takes :class:`ImageItem` inputs)."""

    model_config = ConfigDict(extra="forbid")
    inputs: Items
    kind: Kind = "document"
    outputs: list[OutputKind] = Field(default_factory=_dense_only, min_length=1)
    return_tokens: StrictBool = False
    task: Text | None = None

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, v: Items) -> list[str | ImageItem]:
        return _texts(v)  # type: ignore[arg-type,return-value]


class TeiEmbedRequest(BaseModel):
    """text-embeddings-inference's embedding request (``/embed``, ``/embed_sparse``, ``POST /``).
    ``truncate`` overrides the server's rule for this request; ``prompt_name`` ``query``
    adds the model's query instruction, ``document`` / ``passage`` its passage instruction,
    and a task's name (BAAI/llm-embedder's ``qa``, a sentence-transformers prompt name) that
    task's query instruction."""

    model_config = ConfigDict(extra="ignore")
    inputs: Texts
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: Literal["Right", "Left"] = "Right"
    prompt_name: Text | None = None
    dimensions: StrictInt | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        return _texts(self.inputs)


class TeiSparseValue(BaseModel):
    index: int
    value: float


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
    truncated: int = Field(0, description="inputs cut at the end")
    chunked: int = Field(0, description="inputs longer than the window that the long-input policy handled")


class DocumentIn(BaseModel):
    text: InputText


class RerankRequest(BaseModel):
    """Cohere / Jina ``POST /rerank``."""

    model_config = ConfigDict(extra="ignore")
    query: Query
    documents: list[InputText | DocumentIn] = Field(min_length=1)
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = False
    model: Text | None = None

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


class TeiRerankRequest(BaseModel):
    """text-embeddings-inference's ``/rerank``: ``texts`` where the Cohere shape has
    ``documents``; scores are sigmoid probabilities unless ``raw_scores``."""

    model_config = ConfigDict(extra="ignore")
    query: Query
    texts: list[InputText] = Field(min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["Right", "Left"] = "Right"


class TeiRerankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


class TeiTokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: Texts
    add_special_tokens: StrictBool = True
    prompt_name: Text | None = None

    def texts(self) -> list[str]:
        return _texts(self.inputs)


class TeiToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class CohereRerankResponse(BaseModel):
    """Cohere's rerank response (``id``, ``results``, ``meta``), with Jina's ``model`` and
    ``usage`` beside them."""

    id: str
    results: list[RerankItem]
    meta: dict[str, Any]
    model: str
    usage: Usage


class SearchRequest(BaseModel):
    """``query`` (a text), ``image`` (an image model's index: base64, a data URI or, when
    the server fetches them, an http(s) URL), or both: one composed query."""

    model_config = ConfigDict(extra="forbid")
    query: Query | None = None
    image: Text | None = None
    k: StrictInt = Field(default=10, ge=1, le=1000)
    mode: SearchMode = "hybrid"
    weights: tuple[Weight, Weight, Weight] | None = None
    candidates: StrictInt | None = Field(default=None, ge=1)
    fusion: Literal["auto", "weighted", "rrf"] = "auto"
    rerank: StrictBool = False
    rerank_top: StrictInt = Field(default=50, ge=1, le=1000)
    rerank_weight: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    filter: dict[str, Any] | list[str] | str | None = Field(
        default=None,
        description='metadata filter: {"year": {"$gte": 2020}, "lang": {"$in": ["en", "zh"]}, '
        '"path": {"$prefix": "docs/"}} or conditions as text ("year>=2020")',
    )

    @model_validator(mode="after")
    def _something(self) -> SearchRequest:
        if self.query is None and self.image is None:
            raise ValueError("a search needs 'query', 'image' or both")
        return self


class SearchHit(BaseModel):
    id: str
    score: float
    text: str
    title: str = ""
    chunk: int = 0
    scores: dict[str, float] = Field(default_factory=dict)
    metadata: dict[str, object] = Field(default_factory=dict)
    image: str | None = Field(None, description="an image document's file")


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    model: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorBody(BaseModel):
    """Every error answer (OpenAI's shape)."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "the request cannot be read"},
    401: {"model": ErrorBody, "description": "missing or wrong API key (when the server has one)"},
    404: {"model": ErrorBody, "description": "the server runs no model (or index) for this route"},
    408: {"model": ErrorBody, "description": "the request body arrived too slowly"},
    413: {
        "model": ErrorBody,
        "description": "body, input count, input length or an image over the server's limits",
    },
    422: {
        "model": ErrorBody,
        "description": "malformed JSON, wrong types, blank or invalid text, bad options",
    },
    429: {"model": ErrorBody, "description": "too many requests in flight; retry after Retry-After seconds"},
}
