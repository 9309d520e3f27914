"""Exponential backoff for a device that keeps failing, on an injectable monotonic clock
(so tests step time instead of sleeping)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        initial_s: float = 1.0,
        max_s: float = 60.0,
        factor: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            raise ValueError("need 0 < initial_s <= max_s and factor >= 1")
        self._initial = initial_s
        self._max = max_s
        self._factor = factor
        self._clock = clock
        self.failures = 0
        self._next_attempt = float("-inf")

    def ready(self) -> bool:
        return self._clock() >= self._next_attempt

    def retry_in(self) -> float:
        return max(0.0, self._next_attempt - self._clock())

    def failure(self) -> float:
        """Record a failure; returns the delay before the next attempt."""
        self.failures += 1
        # The exponent is capped so a device that is down for weeks cannot overflow a float.
        exponent = min(self.failures - 1, 64)
        delay = min(self._max, self._initial * self._factor**exponent)
        self._next_attempt = self._clock() + delay
        return delay

    def success(self) -> None:
        self.failures = 0
        self._next_attempt = float("-inf")
