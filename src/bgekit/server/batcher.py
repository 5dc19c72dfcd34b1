"""The request batcher: concurrent requests' token sequences are queued and run together.

Handlers tokenise their input and ``await submit(...)``. One worker thread takes queued
jobs in arrival order until their tokens reach ``gather_tokens`` (always at least one
job), runs them as one call of the model's engine (which plans its own padded batches),
and hands each job exactly its own rows back on the event loop. A job whose client went
away before its turn is dropped unrun.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic

from typing_extensions import TypeVar

from bgekit.types import TokenSeq

logger = logging.getLogger(__name__)
Opt = TypeVar("Opt")  # what a job asks for (e.g. a set of outputs); the run receives the union
# what the run gives back per sequence (an embedding row, a score); the default keeps the
# one-parameter spelling ``Batcher[Opt]`` valid (typing_extensions: defaults are PEP 696, 3.13)
R = TypeVar("R", default=Any)


@dataclass
class _Job(Generic[Opt, R]):
    seqs: list[TokenSeq]
    option: Opt
    future: asyncio.Future[list[R]]
    loop: asyncio.AbstractEventLoop
    tokens: int = 0
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """What one model run did, for metrics."""

    jobs: int
    inputs: int
    tokens: int
    seconds: float


class Batcher(Generic[Opt, R]):
    """Groups jobs by a token budget and runs them on one worker thread.

    ``run(seqs, options)`` gets the concatenated sequences of the jobs in a batch and the
    list of their options, and returns one result (an ``R``) per sequence, in order; each
    job's ``submit`` gets its own results back as a ``list[R]``.
    """

    def __init__(
        self,
        run: Callable[[list[TokenSeq], list[Opt]], Sequence[R]],
        *,
        gather_tokens: int,
        name: str,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        if gather_tokens < 1:
            raise ValueError("gather_tokens must be at least 1")
        self._run = run
        self.gather_tokens = gather_tokens
        self.name = name
        self._on_batch = on_batch
        self._queue: deque[_Job[Opt, R]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet taken by the worker)."""
        return len(self._queue)

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name=f"bgekit-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued and running jobs, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def submit(self, seqs: Sequence[TokenSeq], option: Opt) -> list[R]:
        """Queue the sequences and wait for their results (one per sequence)."""
        if self._thread is None or self._stopping:
            raise RuntimeError(f"the {self.name} batcher is not running")
        if not seqs:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(list(seqs), option, loop.create_future(), loop, sum(len(s) for s in seqs))
        with self._cond:
            self._queue.append(job)
            self._cond.notify()
        return await job.future  # cancelled when the client goes away; the worker then skips the job

    def _take(self) -> list[_Job[Opt, R]] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            jobs: list[_Job[Opt, R]] = []
            tokens = 0
            while self._queue:
                job = self._queue[0]
                if job.future.cancelled():
                    self._queue.popleft()
                    continue
                if jobs and tokens + job.tokens > self.gather_tokens:
                    break
                jobs.append(self._queue.popleft())
                tokens += job.tokens
            self._busy = bool(jobs)
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            seqs = [s for j in jobs for s in j.seqs]
            start = time.perf_counter()
            try:
                results = list(self._run(seqs, [j.option for j in jobs]))
                error: BaseException | None = None
            except Exception as e:  # handed to every job of the batch; the worker keeps going
                logger.exception("%s batch failed", self.name)
                results, error = [], e
            finally:
                self._busy = False
            if self._on_batch is not None:
                self._on_batch(
                    BatchStats(len(jobs), len(seqs), sum(j.tokens for j in jobs), time.perf_counter() - start)
                )
            at = 0
            for job in jobs:
                part = results[at : at + len(job.seqs)]
                at += len(job.seqs)
                job.loop.call_soon_threadsafe(_settle, job.future, part, error)


def _settle(future: asyncio.Future[list[R]], result: list[R], error: BaseException | None) -> None:
    if future.done():  # cancelled while running: nobody is waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
