"""The serving side of the call relay: calls a node's front processes took on its public
port (the endorser's fronts, gridledger_endorser/front.py), served by this process's own
handlers behind the same interceptors (metrics, then authorisation with the members' shares)
as a call taken on the port would be.

Why: gRPC's per-call work (the call's stream, metadata and status, its completion-queue round
trips) is most of what a trivial call costs a server, and a message of a long-lived stream
costs about a quarter of it (docs/performance.md, thirty-fourth round). Fronts take the calls
and hand each over as one message, so the process that holds the state (for the endorser:
admission, option holds, the broadcaster) spends its one core on the calls' work.

The relay's socket is a Unix socket in a directory only the node's own user can open
(`prepare_socket`), so what a front says about its caller (the client certificate its TLS
handshake verified) is believed as this process's own handshake would be; the caller is
still judged here, by the authorisation table, against the members' shares of this
process's calls. Nothing on the relay reaches a handler unjudged, and no relayed content
ends the stream: an unknown method, a request that does not parse or a handler's bug is
that call's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from gridledger.rpc.v1 import relay_pb2, relay_pb2_grpc

log = logging.getLogger(__name__)

# Relayed calls one front may have in progress here; a front keeps its own bound below it
# (front.py), so this only stops a front that does not.
MAX_CALLS_PER_FRONT = 4096
# A relayed call is the caller's request (bounded by the public port's receive limit, which
# the front enforces) plus its certificate: the relay itself takes the channels' largest.
RELAY_MESSAGE_BYTES = 64 << 20
RELAY_MESSAGE_LIMIT = ("grpc.max_receive_message_length", RELAY_MESSAGE_BYTES)
# sockaddr_un's path: 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107


def prepare_socket(path: Path) -> Path:
    """`path` ready to bind: its directory made, open to this user only (fronts run as the
    same user; no one else may speak for a caller), and a stale socket of an earlier run
    removed. ValueError when the path is too long for a Unix socket."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"the relay socket path {path} is longer than {MAX_SOCKET_PATH} "
                         "bytes; choose a shorter --data-dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return path


class RelayedContext:
    """What the interceptors and handlers use of a servicer context, for one relayed call:
    the front's caller as the TLS peer, the one request, and the status the call ends with."""

    __slots__ = ("_code", "_details", "_pem", "_request", "_trailing")

    def __init__(self, caller_pem: bytes, request: Any) -> None:
        self._pem = caller_pem
        self._request = request
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str], ...] = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}

    async def read(self) -> Any:
        request, self._request = self._request, aio.EOF
        return request

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "relay"

    def time_remaining(self) -> None:
        return None

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self._trailing = tuple(metadata)

    def answer(self, call_id: int, response: bytes) -> relay_pb2.RelayedAnswer:
        code = self._code or grpc.StatusCode.OK
        return relay_pb2.RelayedAnswer(
            call_id=call_id, code=code.value[0], details=self._details,
            response=response if code == grpc.StatusCode.OK else b"",
            trailing_metadata=[relay_pb2.RelayedTrailer(key=k, value=str(v))
                               for k, v in self._trailing])


@dataclass(frozen=True)
class _Details:
    """grpc.HandlerCallDetails of a relayed call, for the interceptors."""

    method: str
    invocation_metadata: tuple[()] = ()


class _CapturingServer:
    """Stands in for a server when a generated `add_...Servicer_to_server` registers a
    servicer: keeps its method handlers by full method name."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the same handlers arrive by name below

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        for method, handler in handlers.items():
            self.handlers[f"/{service}/{method}"] = handler


def method_handlers(registrations: Iterable[tuple[Callable[[Any, Any], None], Any]]
                    ) -> dict[str, grpc.RpcMethodHandler]:
    """Every method handler the (register, servicer) pairs give, by full method name."""
    capture = _CapturingServer()
    for register, servicer in registrations:
        register(servicer, capture)
    return capture.handlers


def unary_request_methods(handlers: Mapping[str, grpc.RpcMethodHandler]) -> list[str]:
    """The methods a relay can carry: one request, one response (the endorser's all are)."""
    return sorted(m for m, h in handlers.items() if h.unary_unary is not None)


class CallRelayServicer(relay_pb2_grpc.CallRelayServicer):
    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler],
                 interceptors: Sequence[aio.ServerInterceptor]) -> None:
        self._handlers = {m: handlers[m] for m in unary_request_methods(handlers)}
        self._interceptors = tuple(interceptors)

    async def Relay(self, request_iterator: Any, context: aio.ServicerContext) -> None:
        answers: asyncio.Queue[relay_pb2.RelayedAnswer | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def take_calls() -> None:
            try:
                async for call in request_iterator:
                    if len(running) >= MAX_CALLS_PER_FRONT:
                        answers.put_nowait(_refusal(
                            call.call_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "the endorser has too many of this front's calls in progress"))
                        continue
                    task = asyncio.ensure_future(self._serve(call, answers))
                    running.add(task)
                    task.add_done_callback(running.discard)
            finally:
                answers.put_nowait(None)  # the front closed the stream (or it broke)

        reader = asyncio.ensure_future(take_calls())
        try:
            while (answer := await answers.get()) is not None:
                await context.write(answer)
        finally:
            reader.cancel()
            # A call admitted here runs to its end whoever waits for it, as on the public
            # server: its answer has nowhere to go, the work it started is kept.

    async def _serve(self, call: relay_pb2.RelayedCall,
                     answers: asyncio.Queue[relay_pb2.RelayedAnswer | None]) -> None:
        try:
            answer = await self._answer(call)
        except Exception:  # a handler's bug: that call's answer, never the stream's end
            log.exception("relayed call %s failed", call.method)
            answer = _refusal(call.call_id, grpc.StatusCode.UNKNOWN,
                              "the endorser failed to serve the call")
        answers.put_nowait(answer)

    async def _answer(self, call: relay_pb2.RelayedCall) -> relay_pb2.RelayedAnswer:
        raw = self._handlers.get(call.method)
        if raw is None:
            return _refusal(call.call_id, grpc.StatusCode.UNIMPLEMENTED,
                            f"method {call.method!r} is not served by this endorser")
        try:
            request = raw.request_deserializer(call.request)
        except DecodeError:
            return _refusal(call.call_id, grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a {call.method.rpartition('/')[2]} request")
        handler = await self._intercepted(raw, _Details(call.method))
        context = RelayedContext(call.caller_certificate_pem, request)
        if handler.stream_unary is not None:  # as authz.py serves it: request via read()
            response = await handler.stream_unary(None, context)
        else:
            response = await handler.unary_unary(request, context)
        ok = context.code() in (None, grpc.StatusCode.OK) and response is not None
        return context.answer(call.call_id,
                              handler.response_serializer(response) if ok else b"")

    async def _intercepted(self, handler: grpc.RpcMethodHandler,
                           details: _Details) -> grpc.RpcMethodHandler:
        """`handler` behind the interceptors, the first outermost (as gRPC's server does)."""
        async def innermost(_details: Any) -> grpc.RpcMethodHandler:
            return handler
        continuation = innermost
        for interceptor in reversed(self._interceptors):
            continuation = _step(interceptor, continuation)
        return await continuation(details)


def _step(interceptor: aio.ServerInterceptor,
          inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def intercepted(details: Any) -> grpc.RpcMethodHandler:
        return await interceptor.intercept_service(inner, details)
    return intercepted


def _refusal(call_id: int, code: grpc.StatusCode, details: str) -> relay_pb2.RelayedAnswer:
    return relay_pb2.RelayedAnswer(call_id=call_id, code=code.value[0], details=details)
