"""A long-running server's memory on glibc: freed memory goes back to the system.

Under load, glibc keeps memory a request freed in its arenas (one per thread that
allocated, up to eight per core) instead of returning it; a server's resident size then
climbs round after round although nothing is live (measured: +100 MiB per round of 256
clients, while the Python heap stayed flat under tracemalloc). Two remedies, both no-ops
where the C library is not glibc:

- :func:`limit_arenas` caps the arenas (``mallopt(M_ARENA_MAX)``), before threads start;
- :class:`MemoryTrimmer` calls ``malloc_trim(0)`` after a model run, at most every few
  seconds, which hands free pages of every arena back.

What is left is live memory that levels off: the CPU kernel caches. Every new matrix shape
(the packed forward's row count is the batch's token count, so nearly every batch has a
new one) gets a compiled oneDNN kernel, kept in oneDNN's primitive cache and PyTorch's
oneDNN cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` / ``LRU_CACHE_CAPACITY``, 1,024 entries
each by default, least recently used dropped). Measured with the packaged model in bf16:
the server's anonymous memory rises by ~750 MiB until both are full, then stays;
:func:`limit_kernel_caches` caps them at 256 entries, which levels it off after ~200 MiB
within the first busy seconds, at the same throughput (benchmarks/RESULTS.md, Hardening).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas; ``True`` when applied."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas) == 1)


# Entries kept in each CPU kernel cache (see the module's docstring).
KERNEL_CACHE_ENTRIES = 256
_KERNEL_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def limit_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> dict[str, str]:
    """Cap oneDNN's and PyTorch's oneDNN kernel caches at ``entries`` each, where the
    environment does not already set them; returns the settings in force. Call it before
    the first model run: the libraries read these variables once, at their first use."""
    return {name: os.environ.setdefault(name, str(entries)) for name in _KERNEL_CACHES}


class MemoryTrimmer:
    """``malloc_trim(0)`` after work: at once when the server falls idle, else at most once
    per ``every`` seconds under continuous load (a trim takes milliseconds)."""

    def __init__(self, every: float = 2.0):
        self.every = every
        self.trims = 0
        self._libc = _glibc()
        self._last: float | None = None  # never trimmed (time.monotonic() may start near 0)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._libc is not None

    def maybe_trim(self, idle: bool = False) -> None:
        if self._libc is None:
            return
        now = time.monotonic()
        recent = self._last is not None and now - self._last < self.every
        if (not idle and recent) or not self._lock.acquire(blocking=False):
            return
        try:
            self._last = now
            self._libc.malloc_trim(0)
            self.trims += 1
        finally:
            self._lock.release()
