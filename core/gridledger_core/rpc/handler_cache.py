"""A server interceptor's wrapped handlers, built once per method.

gRPC asks an interceptor for every call; wrapping the method's handler each time would cost
on every call. A method's wrapper is built once, and again only if the server ever hands out
another handler for it: one entry per method, so the map is bounded by the services served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class WrappedHandlers:
    def __init__(self, wrap: Callable[[Any, str], Any]) -> None:
        self._wrap = wrap  # (handler, full method name) -> the wrapped handler
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def get(self, handler: Any, method: str) -> Any:
        """The wrapped `handler` of `method` (None when no handler serves it)."""
        if handler is None:
            return None
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(handler, method))
        return cached[1]
