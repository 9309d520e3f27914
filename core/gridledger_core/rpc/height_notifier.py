"""Waking long-lived streams (Deliver, SubscribeCommits) when a chain grows."""

from __future__ import annotations

import threading
from collections.abc import Callable


class HeightNotifier:
    """`grew()` is called after each new block; streams wait for a height with
    `wait_for_height`, which returns False once the node is shutting down (`close`)."""

    def __init__(self, height: Callable[[], int]) -> None:
        self._height = height
        self._cond = threading.Condition()
        self._closed = False

    def grew(self, *_: object) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for_height(self, height: int, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._height() >= height, timeout)
            return not self._closed
