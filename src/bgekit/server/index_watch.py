"""Serving the index as it is on disk: another process's ``bgekit index add`` / ``delete``
saves a new generation; the server notices (the manifest file changed), loads it beside the
one it serves and switches to it between requests. A request keeps the index it started
with, so a switch never mixes two generations in one answer. A new generation that does not
load (damaged, another model) is not served: the old one stays, the error is reported by
``/info`` and the log, and that generation is not tried again until the manifest changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bgekit.errors import BgekitError

if TYPE_CHECKING:
    from bgekit.index import Index

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    """After a check: the generation served, whether this check switched to it, and why
    the generation on disk is not served (``None`` when it is)."""

    generation: str | None
    reloaded: bool
    error: str | None = None


class IndexWatcher:
    """Watches a saved index's manifest; :meth:`check` switches to a new generation
    (``swap`` receives the new index); :meth:`start` checks every ``interval`` seconds on a
    thread of its own."""

    def __init__(self, index: Index, swap: Callable[[Index], None], interval: float):
        if index.path is None:
            raise BgekitError("only a saved index can be watched")
        from bgekit.index.storage import MANIFEST

        self.root: Path = index.path
        self.manifest = self.root / MANIFEST
        self.interval = interval
        self._index = index
        self._swap = swap
        self._signature = self._stat()
        self._failed: str | None = None  # a generation that did not load; retried when the manifest changes
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        """What changes whenever a save replaces the manifest (a rename: a new inode)."""
        try:
            st = self.manifest.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    @property
    def generation(self) -> str | None:
        return self._index.generation

    def check(self, *, force: bool = False) -> ReloadResult:
        """Switch to the generation on disk if it is new and loads; ``force`` reads the
        manifest even when the file looks unchanged and retries a generation that failed."""
        from bgekit.index import Index
        from bgekit.index.storage import read_manifest

        with self._lock:
            signature = self._stat()
            if signature == self._signature and not force:
                return ReloadResult(self.generation, False, self.error)
            self._signature = signature
            try:
                on_disk = str(read_manifest(self.root)["generation"])
            except BgekitError as e:
                return self._failure(None, str(e))
            if on_disk == self.generation:
                self.error = None
                return ReloadResult(self.generation, False)
            if on_disk == self._failed and not force:
                return ReloadResult(self.generation, False, self.error)
            try:
                new = Index.load(self.root, self._index.embedder)
            except BgekitError as e:
                return self._failure(on_disk, str(e))
            self._index, self._failed, self.error = new, None, None
            self._swap(new)
            logger.info("now serving %s of %s (%d documents)", new.generation, self.root, len(new))
            return ReloadResult(new.generation, True)

    def _failure(self, generation: str | None, message: str) -> ReloadResult:
        self._failed = generation
        self.error = f"{message} (still serving {self.generation})"
        logger.warning("index not reloaded: %s", self.error)
        return ReloadResult(self.generation, False, self.error)

    def start(self) -> None:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bgekit-index-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watcher must outlive anything a load throws
                logger.exception("checking %s for a new generation failed", self.root)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
