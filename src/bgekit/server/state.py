"""What a running server holds: its models, their request batchers and its counters."""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from starlette.exceptions import HTTPException

from bgekit.errors import InputError
from bgekit.server.batcher import Batcher, BatchStats
from bgekit.server.config import LONGEST_TEXT_TOKENS, ServerConfig
from bgekit.server.image_inputs import ImagePolicy, ImageReader
from bgekit.server.index_watch import IndexWatcher
from bgekit.server.memory import MemoryTrimmer
from bgekit.server.metrics import Metrics
from bgekit.types import EmbeddingRow, Outputs, TokenSeq

if TYPE_CHECKING:
    from bgekit.index import Index
    from bgekit.models import Embedder, Reranker

logger = logging.getLogger(__name__)
# A text this many characters per allowed token is refused (or cut, with --truncate) before
# it is tokenised: no tokenizer in use here gives fewer tokens than characters / 32 on text.
CHARS_PER_TOKEN = 32


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
        self.trimmer = MemoryTrimmer()
        self.ready = False
        self.in_flight = 0
        # what each request asks for -> what each of its sequences gets back
        self.embed_batcher: Batcher[Outputs, EmbeddingRow] | None = None
        self.rerank_batcher: Batcher[None, float] | None = None
        self.index_watch: IndexWatcher | None = None
        self.image_policy = ImagePolicy(
            config.image_limits(),
            allow_urls=config.allow_image_urls,
            max_fetch_bytes=max(config.max_body_bytes, config.max_image_bytes),
        )
        self.images = ImageReader(self.image_policy)

    # -- start and stop ------------------------------------------------------------------

    def load(self) -> None:
        """Load what the config names and was not passed in (runs once, at start-up), every
        model on the engine the config describes."""
        from bgekit.models import Embedder, EmbedderSettings, Reranker

        cfg = self.config
        engine = cfg.served_engine()
        limit = cfg.max_input_tokens
        if self.index is None and cfg.index and self.embedder is None and not cfg.model:
            from bgekit.index import Index

            self.index = Index.load(cfg.index, engine=engine)  # the model the index was built with
            self.embedder = self.index.embedder
        # With nothing named or passed in, the packaged model is served (as `bgekit serve` says).
        nothing = not cfg.reranker and self.reranker is None
        if self.embedder is None and (cfg.model or nothing):
            from bgekit.models.packaged import packaged_model_dir

            if cfg.long_input == "truncate":  # the limit is the model's window
                settings = EmbedderSettings(query_max_length=limit, passage_max_length=limit, task=cfg.task)
            else:  # the window stays the model's; the limit is the longest document kept
                settings = EmbedderSettings(
                    long_input=cfg.long_input,
                    long_input_overlap=cfg.long_input_overlap,
                    mcls_stride=cfg.mcls_stride,
                    task=cfg.task,
                    max_input_tokens=limit or (LONGEST_TEXT_TOKENS if cfg.long_input == "chunk" else None),
                )
            name = cfg.model or str(packaged_model_dir())
            self.embedder = Embedder.from_pretrained(name, settings=settings, engine=engine)
        if self.reranker is None and cfg.reranker:
            self.reranker = Reranker.from_pretrained(
                cfg.reranker,
                max_length=limit if cfg.long_passage == "truncate" else None,
                engine=engine,
                long_passage=cfg.long_passage,
                passage_overlap=cfg.passage_overlap,
            )
        if self.index is None and cfg.index:
            from bgekit.index import Index

            self.index = Index.load(cfg.index, self.embedder)
        if self.embedder is not None and "image" in self.embedder.info.modalities:
            self._widen_image_limits(self.embedder)
        if self.image_policy.allow_urls:
            try:
                import httpx  # noqa: F401
            except ImportError:
                raise InputError("allow_image_urls needs httpx: pip install httpx") from None

    def _widen_image_limits(self, embedder: Embedder) -> None:
        """The request check (:mod:`~bgekit.server.image_inputs`) applies the server's image
        limits; the model's own must be no stricter, or a batch would refuse an image the
        check took (an encoded image over the library's default; a small image's crop,
        ``size`` x ``size`` pixels, over a small pixel limit). Raised where needed, never lowered."""
        from bgekit.images import ImageLimits
        from bgekit.models.vision import ImageProcessor

        theirs = cast(ImageProcessor, embedder.processor).limits
        mine = self.image_policy.limits
        wider = ImageLimits(max(mine.max_bytes, theirs.max_bytes), max(mine.max_pixels, theirs.max_pixels))
        if wider != theirs:
            embedder.set_image_limits(wider)

    def start(self) -> None:
        self.images = ImageReader(self.image_policy)  # on the serving event loop
        if self.index is not None and self.index.path is not None:
            self.index_watch = IndexWatcher(self.index, self._serve_index, self.config.index_poll)
            self.index_watch.start()
        budget = self.config.gather_tokens
        if self.embedder is not None:
            self.embed_batcher = Batcher(
                self._run_embed,
                gather_tokens=budget,
                name="embedder",
                on_batch=self._after_batch("embedder"),
            )
            self.embed_batcher.start()
        if self.reranker is not None:
            self.rerank_batcher = Batcher(
                self._run_rerank,
                gather_tokens=budget,
                name="reranker",
                on_batch=self._after_batch("reranker"),
            )
            self.rerank_batcher.start()

    def _after_batch(self, model: str) -> Callable[[BatchStats], None]:
        """Counts the run, then gives freed memory back (see :mod:`bgekit.server.memory`)."""
        observe = self.metrics.batch_observer(model)

        def after(stats: BatchStats) -> None:
            observe(stats)
            batchers = (self.embed_batcher, self.rerank_batcher)
            self.trimmer.maybe_trim(idle=all(b is None or b.depth == 0 for b in batchers))

        return after

    def _serve_index(self, index: Index) -> None:
        """From the next request on (one that started keeps the index it took)."""
        self.index = index

    def stop(self) -> None:
        if self.index_watch is not None:
            self.index_watch.stop()
        for b in (self.embed_batcher, self.rerank_batcher):
            if b is not None:
                b.stop()

    async def warm_up(self) -> None:
        """One tiny request through every model, so the first client does not pay for it."""
        if self.embedder is not None and self.embed_batcher is not None:
            seqs = self.embedder.tokenize(["warm up"])
            await self.embed_batcher.submit(seqs, Outputs(self.embedder.info.heads))
        if self.reranker is not None and self.rerank_batcher is not None:
            await self.rerank_batcher.submit(self.reranker.tokenize([("warm", "up")]), None)

    # -- model runs (on the batcher threads) ---------------------------------------------

    def _run_embed(self, seqs: list[TokenSeq], options: list[Outputs]) -> list[EmbeddingRow]:
        """One engine run for every queued request: the union of the outputs they asked for
        (each was checked before it was queued); each request keeps only its own."""
        assert self.embedder is not None
        return self.embedder.encode_rows(seqs, outputs=functools.reduce(operator.or_, options))

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

    def bound_chars(
        self, texts: Sequence[str], limit: int, what: str, truncate: bool | None = None
    ) -> list[str]:
        """The cheap length rule, before any tokenising: a text over ``limit`` tokens'
        worth of characters gets 413, or is cut there when the server truncates (or the
        request asks to: ``truncate``)."""
        most = limit * CHARS_PER_TOKEN
        cut = self.config.truncate if truncate is None else truncate
        out = []
        for i, t in enumerate(texts):
            if len(t) > most:
                if not cut:
                    raise HTTPException(
                        413, f"{what} {i} has {len(t)} characters, over the {most} that {limit} tokens allow"
                    )
                t = t[:most]
            out.append(t)
        return out

    def check_lengths(
        self, seqs: Sequence[TokenSeq], limit: int, what: str, truncate: bool | None = None
    ) -> None:
        if self.config.truncate if truncate is None else truncate:
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
