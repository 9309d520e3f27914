"""Running a threaded servicer's synchronous steps on the asyncio server (aio_server.py).

A step written for gRPC's threaded server refuses a call with `context.abort`, which raises.
On the loop it gets `SyncContext` instead, whose `abort` raises `Aborted`; the asyncio
handler then ends the call with `refuse`, which sets the status rather than awaiting
`context.abort`: that raises an AbortError gRPC keeps on the call, a reference cycle through
the handler's frames that only a full garbage collection frees (one per refusal, thousands
per second under overload; docs/performance.md, seventh round)."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class SyncContext:
    """What the threaded servicers' steps use of a servicer context."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = tuple(metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


def refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str,
           trailing: tuple[tuple[str, str], ...] = ()) -> Any:
    """End the call with a non-OK status: the asyncio server sends it and discards the
    (absent) response; an async generator handler just returns after it."""
    context.set_code(code)
    context.set_details(details)
    if trailing:
        context.set_trailing_metadata(trailing)
    return None
