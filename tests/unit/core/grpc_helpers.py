"""Calling a servicer in process: a context whose abort raises, as gRPC's does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def set_trailing_metadata(self, metadata: object) -> None:
        self.trailers = metadata

    def send_initial_metadata(self, metadata: object) -> None:
        self.headers = metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no TLS peer: the interceptor's verdict (authz._CALLER) is what counts


class StatusError(grpc.RpcError):
    """What a gRPC stub raises for a failed call."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


class InProcess:
    """A stub whose calls go straight to a servicer, aborts raised as a stub would raise
    them; `down` makes every call fail UNAVAILABLE (the service is unreachable)."""

    def __init__(self, servicer: object) -> None:
        self.servicer = servicer
        self.down = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.servicer, name)

        def call(request: Any, timeout: float | None = None) -> Any:
            self.calls.append(name)
            if self.down:
                raise StatusError(grpc.StatusCode.UNAVAILABLE, "connection refused")
            context = FakeContext()
            try:
                return method(request, context)
            except Aborted as exc:
                raise StatusError(exc.code, exc.details,
                                  tuple(getattr(context, "trailers", ()))) from exc
        return call
