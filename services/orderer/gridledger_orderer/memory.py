"""Keep the orderer's resident memory close to what it actually holds.

A flood of large messages (up to the gRPC receive limit, one per handler thread) is bounded
while it lasts, but glibc's allocator keeps what it freed: its mmap threshold rises to the
largest buffer freed, so later buffers land in per-thread heaps, and freed heap pages stay
resident. Without this, 400 MiB of refused 16 MiB broadcasts left an orderer about 270 MiB
larger for good. So: a fixed mmap threshold (large buffers are always mapped, and unmapped
when freed), few arenas (less fragmentation across the handler threads), and a periodic
`malloc_trim` that returns freed heap pages to the system. No-ops where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator(mmap_threshold: int = 128 * 1024, arenas: int = 2) -> bool:
    """Call before the server's threads start. True when glibc took the settings."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and \
        bool(libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> None:
    """Return freed heap pages to the system."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class Trimmer:
    """Calls `trim` every `interval` seconds until stopped."""

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)

    def start(self) -> None:
        if _glibc() is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                trim()
            except Exception:  # never worth stopping the orderer for
                log.exception("malloc_trim failed")
