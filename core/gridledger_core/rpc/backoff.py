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
import time
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


class RetryGate:
    """A client's pause after admission control refused it: no new call to that endorser
    until the retry hint plus jitter has passed, longer while the refusals repeat. The hint
    is about the server, not the one request: a client that kept sending its other calls
    would make the endorser spend on refusals the CPU it needs to commit what it admitted.

    `refused(hint_ms, sent_at)` closes the gate (it only ever moves later); `progressed()`
    (a call got in) resets the growth; `wait_s()` is how long a new call must still wait.
    A client with several calls in flight passes each refused call's send time: refusals of
    calls sent before the gate last closed are the same signal, and neither grow the
    backoff nor move the gate (else one burst of 30 refusals would back off 2**30 times)."""

    def __init__(self, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff = backoff if backoff is not None else Backoff()
        self._clock = clock
        self._not_before = 0.0
        self._closed_at = float("-inf")
        self.refusals = 0  # refusals in a row without progress

    def refused(self, hint_ms: int, sent_at: float | None = None) -> float:
        """Close the gate for the hint plus jitter (growing with repeats); the delay (0 for
        a refusal of a call sent before the gate last closed)."""
        if sent_at is not None and sent_at <= self._closed_at:
            return 0.0
        delay = self._backoff.delay(self.refusals, hint_ms)
        now = self._clock()
        self._not_before = max(self._not_before, now + delay)
        self._closed_at = now
        self.refusals += 1
        return delay

    def progressed(self) -> None:
        self.refusals = 0

    def wait_s(self) -> float:
        return max(0.0, self._not_before - self._clock())
