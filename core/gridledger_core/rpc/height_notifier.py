"""Waking long-lived streams (Deliver, SubscribeCommits) when a chain grows, and the header
a Deliver stream opens with."""

from __future__ import annotations

import threading
from collections.abc import Callable

# An orderer's Deliver sends this as its headers at once, once the caller is let in: its
# follower tells a stream the orderer answered (on an idle cluster it delivers nothing) from
# one refused or never connected, which gRPC's client sees with the same empty headers.
STREAM_OPEN = ("gridledger-stream", "open")


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
