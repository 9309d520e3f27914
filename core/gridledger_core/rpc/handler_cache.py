"""A server interceptor's wrapped handlers, built once per method.

gRPC asks an interceptor for every call; wrapping the method's handler each time would cost
on every call. A method's wrapper is built once, and again only if the server ever hands out
another handler for it: one entry per method, so the map is bounded by the services served.

The authorisation interceptor serves every method as if its request were a stream, so that
the caller is judged (and counted against its member's share) before the request arrives
(authz.py); it marks such a wrapper with the method's kind on the wire, which the metrics
interceptor reports instead of the kind gRPC sees.
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


_WIRE_KIND = "gridledger_wire_kind"


def mark_wire_kind(behaviour: Any, kind: str) -> Any:
    """Record that `behaviour` serves a method whose kind on the wire is `kind` ("unary",
    "server_stream") though it takes its request as a stream."""
    setattr(behaviour, _WIRE_KIND, kind)
    return behaviour


def wire_kind(behaviour: Any) -> str | None:
    return getattr(behaviour, _WIRE_KIND, None)
