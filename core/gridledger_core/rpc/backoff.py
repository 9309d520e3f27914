"""Client side of admission control: the server's retry hint, and backoff with jitter.

An endorser that refuses with RESOURCE_EXHAUSTED says when to come back (trailing metadata
`retry-after-ms`, or the `retry_after_ms` field of a batch result). Clients wait at least
that long, and a random part more, so the clients refused together do not all return in the
same instant and be refused together again; without a hint (UNAVAILABLE, an old server) the
wait grows exponentially with the attempts. Pure functions of (attempt, hint, random draw):
the draw is injected, so tests need no clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RETRY_AFTER = "retry-after-ms"


def retry_after_ms(error: Any) -> int:
    """The `retry-after-ms` trailer of a failed call (sync or asyncio grpc), 0 if none."""
    try:
        metadata = error.trailing_metadata()
    except Exception:  # not a call error, or no metadata yet
        return 0
    for key, value in metadata or ():
        if key == RETRY_AFTER:
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0


@dataclass(frozen=True)
class Backoff:
    """delay(attempt, hint) = min(cap, max(hint, base * 2**attempt)) * (1 + draw), draw in
    [0, jitter): never earlier than the server asked, never beyond cap * (1 + jitter)."""

    base_s: float = 0.05
    cap_s: float = 5.0
    jitter: float = 1.0
    draw: Callable[[], float] = random.random

    def delay(self, attempt: int, hint_ms: int = 0) -> float:
        exponential = self.base_s * (2 ** min(max(attempt, 0), 30))
        floor = min(self.cap_s, max(hint_ms / 1000, exponential))
        return floor * (1 + self.jitter * self.draw())
