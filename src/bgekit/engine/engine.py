"""The one batching engine every model kind runs through.

Inputs arrive tokenised. The engine sorts them by length, groups them into batches
under a token budget, hands each batch to the model's runner as one flat run of token ids
with the inputs' lengths (:class:`TokenBatch`; a padded view is made only where a forward
asks for it) under ``torch.inference_mode``, and puts the per-input results back in input
order. The budget counts real tokens for runners that compute on real tokens only
(``packed``), padded tokens for the others.
Out-of-memory errors (and only those) shrink the budget, down to one input per batch.
With several runners (one model replica per device) batches are shared among them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bgekit.engine.batching import TokenBatch, TokenCount, plan_batches
from bgekit.engine.device import DTYPES, DType
from bgekit.errors import BgekitError
from bgekit.types import TokenSeq

T = TypeVar("T")
logger = logging.getLogger(__name__)
CPU_BATCH_TOKENS = 2048
ACCELERATOR_BATCH_TOKENS = 16384
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How inputs are batched and where the model runs.

    ``devices`` (several, e.g. ``("cuda:0", "cuda:1")``) runs one replica per device in
    data parallel and takes precedence over ``device``. ``max_batch_tokens``: the tokens
    of one forward batch, as that forward computes on them: real tokens (the sum of the
    inputs' lengths) for models on bgekit's packed forward (BERT / XLM-R encoders under
    ``backend="auto"``), padded tokens (inputs times the longest one) for models on the
    transformers forward (decoders, LLM rerankers, ``backend="transformers"``), which
    computes on padding. ``None`` picks by device: 2048 on a CPU (small batches stay in
    cache: measured fastest in benchmarks/encode_throughput.py), 16384 on an accelerator.
    ``progress=None`` shows a bar only when stderr is a terminal and the input spans
    several batches.
    ``dtype="auto"`` is fp16 on CUDA; on a CPU with AMX-BF16 or AVX512-BF16 it runs the
    matrix products in bf16 (fp32 everywhere else) once a check against fp32 at load
    passes, and exact fp32 otherwise; ``"float32"`` forces fp32, ``"int8"`` quantised
    linear layers (CPU, on request only). See :func:`bgekit.engine.resolve_precision`.
    ``backend="auto"`` runs BERT / XLM-R encoders with bgekit's packed forward (no compute
    on padding) and everything else with transformers; ``"transformers"`` always uses the
    latter.
    """

    device: str = "auto"
    devices: tuple[str, ...] = ()
    dtype: DType = "auto"
    max_batch_tokens: int | None = None
    max_batch_size: int = 256
    progress: bool | None = None
    backend: Literal["auto", "transformers"] = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BgekitError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise BgekitError(f"max_batch_tokens must be at least 1, got {self.max_batch_tokens}")
        if self.backend not in ("auto", "transformers"):
            raise BgekitError(f"backend must be 'auto' or 'transformers', got {self.backend!r}")
        if self.max_batch_size < 1:
            raise BgekitError(f"max_batch_size must be at least 1, got {self.max_batch_size}")

    def batch_tokens(self, device: torch.device) -> int:
        """The token budget per batch on ``device`` (see ``max_batch_tokens``)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return CPU_BATCH_TOKENS if device.type == "cpu" else ACCELERATOR_BATCH_TOKENS


class Runner(Protocol[T_co]):
    """A model replica on one device: a batch in, one result per input out.

    A runner whose forward computes on real tokens only sets ``packed = True``; the
    engine then budgets real tokens per batch (padded tokens otherwise, and when absent).
    """

    @property
    def device(self) -> torch.device: ...

    def __call__(self, batch: TokenBatch) -> Sequence[T_co]: ...


def is_out_of_memory(err: BaseException) -> bool:
    """True only for an accelerator's out-of-memory error."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    # MPS reports OOM as a plain RuntimeError with this wording.
    return isinstance(err, RuntimeError) and "MPS backend out of memory" in str(err)


@dataclass
class _Work(Generic[T]):
    seqs: Sequence[TokenSeq]
    lengths: np.ndarray
    queue: deque[np.ndarray]
    results: list[T | None]
    budget: int
    max_batch_size: int
    count: TokenCount = "padded"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> np.ndarray | None:
        with self.lock:
            return self.queue.popleft() if self.queue else None

    def shrink(self, failed: np.ndarray) -> None:
        """Halve the budget below the failed batch (in the tokens it counts: half the
        failed batch's real tokens, or half its inputs at its longest length) and re-plan
        everything not yet run."""
        with self.lock:
            lens = self.lengths[failed]
            half = int(lens.sum()) // 2 if self.count == "real" else len(failed) // 2 * int(lens.max())
            self.budget = min(self.budget, max(1, half))
            pending = np.concatenate([failed, *self.queue]) if self.queue else failed
            sub = plan_batches(self.lengths[pending], self.budget, self.max_batch_size, count=self.count)
            self.queue = deque(pending[b] for b in sub)


class LogProgress:
    """Progress as log lines (``encoding: 1,200/5,183 texts, 410/s, ETA 10s``), one per
    ``every`` seconds, for runs whose stderr is not a terminal; a run shorter than that
    logs nothing, a longer one also logs its end."""

    every = 15.0

    def __init__(self, total: int, desc: str):
        self.total, self.desc = total, desc
        self.done = 0
        self.start = self.last = time.monotonic()
        self.lines = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total and self.lines > 0
        if now - self.last < self.every and not finished:
            return
        self.last = now
        self.lines += 1
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        logger.info(
            "%s: %s/%s texts, %.0f/s, ETA %.0fs", self.desc, f"{self.done:,}", f"{self.total:,}", rate, eta
        )


class Engine:
    """Runs tokenised inputs through runners in token-budgeted, length-sorted batches."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    def run(
        self,
        seqs: Sequence[TokenSeq],
        runners: Sequence[Runner[T]],
        *,
        pad_id: int,
        padding_side: Literal["right", "left"] = "right",
        desc: str = "encoding",
    ) -> list[T]:
        """Results for ``seqs``, in input order."""
        if not seqs:
            return []
        if not runners:
            raise BgekitError("no model replica to run on")
        cfg = self.config
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        if lengths.min() < 1:
            raise BgekitError(f"input {int(lengths.argmin())} has no tokens")
        budget = min(cfg.batch_tokens(r.device) for r in runners)
        count: TokenCount = "real" if all(getattr(r, "packed", False) for r in runners) else "padded"
        plan = plan_batches(lengths, budget, cfg.max_batch_size, count=count)
        work: _Work[T] = _Work(
            seqs=seqs,
            lengths=lengths,
            queue=deque(plan),
            results=[None] * len(seqs),
            budget=budget,
            max_batch_size=cfg.max_batch_size,
            count=count,
        )
        show = cfg.progress
        if show is None:
            show = len(plan) > 1 and sys.stderr.isatty()
        # no terminal for a bar: a log line now and then (count, rate, ETA) on long runs
        log = LogProgress(len(seqs), desc) if cfg.progress is None and not show and len(plan) > 1 else None
        with tqdm(total=len(seqs), desc=desc, unit="text", disable=not show) as bar:

            def advance(n: int) -> None:
                bar.update(n)
                if log is not None:
                    log.update(n)

            def loop(runner: Runner[T]) -> None:
                self._loop(work, runner, pad_id, padding_side, advance)

            if len(runners) == 1:
                loop(runners[0])
            else:
                with ThreadPoolExecutor(max_workers=len(runners)) as pool:
                    for f in [pool.submit(loop, r) for r in runners]:
                        f.result()
        missing = [i for i, r in enumerate(work.results) if r is None]
        if missing:  # a runner returned too few rows: a bug, never silently dropped
            raise BgekitError(f"engine lost results for inputs {missing[:5]}")
        return work.results  # type: ignore[return-value]

    @staticmethod
    def _loop(
        work: _Work[T],
        runner: Runner[T],
        pad_id: int,
        padding_side: Literal["right", "left"],
        advance: Callable[[int], object],
    ) -> None:
        while (idx := work.take()) is not None:
            batch = TokenBatch.from_seqs(
                [work.seqs[i] for i in idx], runner.device, pad_id=pad_id, padding_side=padding_side
            )
            try:
                with torch.inference_mode():
                    out = runner(batch)
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                del batch
                if runner.device.type == "cuda":
                    torch.cuda.empty_cache()
                if len(idx) == 1:
                    raise BgekitError(
                        f"out of memory on a single input of {int(work.lengths[idx[0]])} tokens "
                        f"on {runner.device}; lower the max length or use a larger device"
                    ) from err
                work.shrink(idx)
                continue
            if len(out) != len(idx):
                raise BgekitError(f"runner returned {len(out)} results for a batch of {len(idx)}")
            for i, r in zip(idx.tolist(), out, strict=True):
                work.results[i] = r
            advance(len(idx))
