"""Server settings; every one can also come from a ``BGEKIT_...`` environment variable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bgekit.engine import EngineConfig
from bgekit.errors import InputError
from bgekit.images import DEFAULT_LIMITS, ImageLimits
from bgekit.models.long_input import (
    DEFAULT_MCLS_STRIDE,
    DEFAULT_OVERLAP,
    LongInput,
    LongPassage,
    check_long_passage,
    check_policy,
)

# Under long_input="chunk" (and reranking by windows), the longest text accepted unless
# max_input_tokens says otherwise.
LONGEST_TEXT_TOKENS = 32768


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What ``bgekit serve`` runs and its limits.

    ``engine`` is the one :class:`bgekit.EngineConfig` every served model runs on, with the
    meaning it has everywhere (``max_batch_tokens``: the token budget of one forward
    batch); the server turns its progress bar off. ``gather_tokens``: tokens of queued requests gathered into one
    engine run (which then batches them by length). ``max_concurrent_requests``:
    requests in flight before new ones get 429. ``max_input_tokens``: the longest input
    accepted (default: the model's limit; under ``long_input="chunk"`` 32,768 tokens, under
    ``"mcls"`` the position table); a longer one gets 413, or is cut to it when
    ``truncate``. ``long_input`` / ``long_input_overlap`` / ``mcls_stride``: the embedder's
    long-input policy (:class:`bgekit.EmbedderSettings`); ``task``: the embedder's default
    task (a request's ``task`` or TEI ``prompt_name`` overrides it); ``long_passage`` /
    ``passage_overlap``: the reranker's (:func:`bgekit.models.reranker.load_reranker`). ``max_body_bytes``: the largest request body (413 beyond it, before it is
    read); ``body_timeout``: seconds each part of a body may take to arrive (408 after).
    ``index_poll``: seconds between looks at the served index's manifest; a new generation
    (another process's add or delete) is loaded and served from then on (0: only on
    ``POST /admin/reload``). ``max_image_bytes`` / ``max_image_pixels``: the largest image
    accepted (encoded bytes; width times height), 413 beyond; ``allow_image_urls``: fetch
    http(s) image URLs that clients send (off: 422; a server that fetches reaches whatever
    its network reaches, so allow it for trusted clients only).
    """

    model: str | None = None
    reranker: str | None = None
    index: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    gather_tokens: int = 16384
    max_concurrent_requests: int = 512
    max_input_tokens: int | None = None
    truncate: bool = False
    max_inputs_per_request: int = 2048
    max_body_bytes: int = 8 << 20
    body_timeout: float = 30.0
    long_input: LongInput = "truncate"
    long_input_overlap: int | None = None
    mcls_stride: int = DEFAULT_MCLS_STRIDE
    task: str | None = None
    long_passage: LongPassage = "truncate"
    passage_overlap: int = DEFAULT_OVERLAP
    index_poll: float = 1.0
    max_image_bytes: int = DEFAULT_LIMITS.max_bytes
    max_image_pixels: int = DEFAULT_LIMITS.max_pixels
    allow_image_urls: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if not self.body_timeout > 0:
            raise InputError(f"body_timeout must be positive, got {self.body_timeout}")
        if not self.index_poll >= 0:
            raise InputError(f"index_poll must be 0 (off) or a number of seconds, got {self.index_poll}")
        for name in (
            "gather_tokens",
            "max_concurrent_requests",
            "max_inputs_per_request",
            "max_body_bytes",
            "max_image_bytes",
            "max_image_pixels",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_input_tokens is not None and self.max_input_tokens < 3:
            raise InputError(f"max_input_tokens must be at least 3, got {self.max_input_tokens}")
        if not 0 <= self.port < 65536:
            raise InputError(f"port must be in 0..65535, got {self.port}")
        check_policy(self.long_input)
        check_long_passage(self.long_passage)
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("api_key is empty; leave it unset to serve without a key")

    def served_engine(self) -> EngineConfig:
        """``engine`` as the served models run it (no progress bar)."""
        return dataclasses.replace(self.engine, progress=False)

    def image_limits(self) -> ImageLimits:
        """The limits every image a client sends is opened under."""
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
