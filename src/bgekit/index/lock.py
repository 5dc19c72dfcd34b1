"""One writer at a time per index folder.

A writer holds an exclusive ``flock`` on ``DIR/.bgekit-write.lock`` from the moment it reads
the index it will change until its new manifest is in place, so two writers never start
from the same generation and no acknowledged change is overwritten. The lock file holds the
holder's PID (for the waiting writer's message); the operating system releases the lock when
the process ends, however it ends, so a killed writer never leaves the index locked.

Readers take no lock: a save never touches the generation the manifest names until the
manifest names another one, and a load that loses the race retries
(:func:`bgekit.index.storage.read_consistent`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from bgekit.errors import BgekitError

LOCK_FILE = ".bgekit-write.lock"
POLL_SECONDS = 0.05

logger = logging.getLogger(__name__)


class IndexBusyError(BgekitError):
    """Another process is writing the index and the wait allowed for it ran out."""


class IndexConflictError(BgekitError):
    """The index on disk changed after this copy was loaded: saving would undo that change."""


class WriteLock:
    """The writer lock of an index folder (created if missing). ``wait``: seconds to wait for
    another writer (``None``: as long as it takes, saying once who is being waited for;
    ``0``: fail at once). Re-entrant within one object: :meth:`acquire` on a held lock only
    counts."""

    def __init__(self, root: Path, wait: float | None = None):
        if wait is not None and wait < 0:
            raise BgekitError(
                f"wait must be at least 0 seconds (or None to wait as long as it takes), got {wait}"
            )
        self.root = root
        self.wait = wait
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self) -> str:
        try:
            pid = (self.root / LOCK_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            pid = ""
        return f"PID {pid}" if pid.isdigit() else "another process"

    def acquire(self) -> WriteLock:
        if self._fd is not None:
            self._depth += 1
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = None if self.wait is None else time.monotonic() + self.wait
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        waited = f" (waited {self.wait:g} s)" if self.wait else ""
                        raise IndexBusyError(
                            f"{self.root} is being written by {self._holder()}{waited}; "
                            "try again when it is done, or wait longer (--wait SECONDS)"
                        ) from None
                    if not told:
                        logger.warning("waiting for %s, which is writing %s", self._holder(), self.root)
                        told = True
                    time.sleep(POLL_SECONDS)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._depth = 1
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> WriteLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
