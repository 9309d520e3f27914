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
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio
from prometheus_client import Counter

from gridledger.rpc.v1 import relay_pb2, relay_pb2_grpc
from gridledger_core.rpc.call_shares import REFUSED as MEMBER_REFUSED

log = logging.getLogger(__name__)

# Relayed calls one front may have here, from their arrival until their answers are written;
# a front keeps its own bound below it (front.py), so this only holds back one that does not.
MAX_CALLS_PER_FRONT = 4096
# A relayed call is the caller's request (bounded by the public port's receive limit, which
# the front enforces) plus its certificate: the relay itself takes the channels' largest.
RELAY_MESSAGE_BYTES = 64 << 20
RELAY_MESSAGE_LIMIT = ("grpc.max_receive_message_length", RELAY_MESSAGE_BYTES)
# sockaddr_un's path: 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107

# A front's own refusals, reported to this process: relay.proto's FrontRefusals counts, one
# field a reason, besides its members' shares.
FRONT_REFUSAL_REASONS = tuple(f.name for f in relay_pb2.FrontRefusals.DESCRIPTOR.fields
                              if f.name != "member_share_by_member")
FRONT_REFUSED = Counter("gridledger_rpc_front_refused",
                        "Calls this node's fronts answered without relaying them, by reason "
                        "(a member's share of a front: gridledger_rpc_member_calls_refused).",
                        ["reason"])


def prepare_socket(path: Path) -> Path:
    """`path` ready to bind: its directory made private to this user if missing, and if it
    exists it must be this user's alone (fronts run as the same user; no one else may speak
    for a caller; an existing directory is never changed), and a socket an earlier run left
    there removed. ValueError for a path too long for a Unix socket, a directory open to
    others, or another kind of file at `path`."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"the relay socket path {path} is longer than {MAX_SOCKET_PATH} "
                         "bytes; choose a shorter --data-dir")
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = directory.stat()
    if mode.st_uid != os.geteuid() or stat.S_IMODE(mode.st_mode) & 0o077:
        raise ValueError(f"the relay socket's directory {directory} must be this user's alone "
                         "(mode 0700); give the socket a directory of its own")
    try:
        kind = path.lstat().st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(kind):
        raise ValueError(f"{path} exists and is not a socket; not removing it")
    path.unlink()
    return path


def relayed_answer(call_id: int, code: grpc.StatusCode, details: str,
                   trailing: Iterable[tuple[str, str | bytes]] = (),
                   response: bytes = b"") -> relay_pb2.RelayResponse:
    """An answer as the relay carries it: a body only with OK."""
    return relay_pb2.RelayResponse(
        call_id=call_id, code=code.value[0], details=details,
        response=response if code == grpc.StatusCode.OK else b"",
        trailing_metadata=[relay_pb2.RelayedTrailer(
            key=key, value=value if isinstance(value, bytes) else value.encode())
            for key, value in trailing])


class BadRequest(Exception):
    """A relayed request that does not parse as its method's (INVALID_ARGUMENT)."""


class RelayedContext:
    """What the interceptors and handlers use of a servicer context, for one relayed call:
    the front's caller as the TLS peer, the one request (parsed when read, after the caller
    was judged and counted, as gRPC's server reads it), the time left, and the status the
    call ends with."""

    __slots__ = ("_code", "_deadline", "_deserialize", "_details", "_method", "_pem",
                 "_request", "_trailing")

    def __init__(self, caller_pem: bytes, method: str, request: bytes,
                 deserialize: Callable[[bytes], Any], deadline: float | None = None) -> None:
        self._pem = caller_pem
        self._method = method
        self._request: bytes | None = request
        self._deserialize = deserialize
        self._deadline = deadline  # time.monotonic() seconds
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}

    async def read(self) -> Any:
        raw, self._request = self._request, None
        if raw is None:
            return aio.EOF
        try:
            return self._deserialize(raw)
        except DecodeError:
            self.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            self.set_details(f"the request is not a {self._method.rpartition('/')[2]} request")
            raise BadRequest from None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "relay"

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(metadata)

    def answer(self, call_id: int, response: bytes | None) -> relay_pb2.RelayResponse:
        code = self._code or grpc.StatusCode.OK
        if code == grpc.StatusCode.OK and response is None:  # gRPC's server: no response
            return relayed_answer(call_id, grpc.StatusCode.UNKNOWN,
                                  "the endorser gave no response")
        return relayed_answer(call_id, code, self._details, self._trailing, response or b"")


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
        before = len(capture.handlers)
        register(servicer, capture)
        if len(capture.handlers) == before:  # generated code that registers otherwise
            raise ValueError(f"registering {type(servicer).__name__} named no method handlers")
    return capture.handlers


def unary_request_methods(handlers: Mapping[str, grpc.RpcMethodHandler]) -> list[str]:
    """The methods a relay can carry: one request, one response (the endorser's all are)."""
    return sorted(m for m, h in handlers.items() if h.unary_unary is not None)


def count_front_refusals(refusals: relay_pb2.FrontRefusals, members: Collection[str]) -> None:
    """A front's report, into this process's metrics: its members' share refusals into the
    series the node's own shares count (call_shares.py), for `members` only (the labels stay
    the consortium's), the rest by reason."""
    for member, count in refusals.member_share_by_member.items():
        if member in members:
            MEMBER_REFUSED.labels(member).inc(count)
    for reason in FRONT_REFUSAL_REASONS:
        if count := getattr(refusals, reason):
            FRONT_REFUSED.labels(reason).inc(count)


class CallRelayServicer(relay_pb2_grpc.CallRelayServiceServicer):
    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler],
                 interceptors: Sequence[aio.ServerInterceptor],
                 on_streams: Callable[[int], None] | None = None,
                 members: Collection[str] = ()) -> None:
        """`on_streams(n)` is told how many fronts' streams are open whenever it changes;
        `members`: the consortium's organisations, whose refusals the fronts report."""
        self._handlers = {m: handlers[m] for m in unary_request_methods(handlers)}
        self._interceptors = tuple(interceptors)
        self._chains: dict[str, grpc.RpcMethodHandler] = {}
        self._on_streams = on_streams
        self._streams = 0
        self._members = frozenset(members)

    def _opened(self, change: int) -> None:
        self._streams += change
        if self._on_streams is not None:
            self._on_streams(self._streams)

    async def Relay(self, request_iterator: Any, context: aio.ServicerContext) -> None:
        answers: asyncio.Queue[relay_pb2.RelayResponse | None] = asyncio.Queue()
        # A call holds a place from its arrival until its answer is written: at the bound
        # this stops reading calls (HTTP/2 holds the front's), so neither the tasks nor the
        # answers waiting for the front to read them can grow without bound.
        places = asyncio.Semaphore(MAX_CALLS_PER_FRONT)
        running: set[asyncio.Task[None]] = set()

        async def take_calls() -> None:
            try:
                async for call in request_iterator:
                    if not call.call_id:  # a report, not a call: nothing to answer
                        try:
                            count_front_refusals(call.refusals, self._members)
                        except Exception:  # metrics only: never the stream's end
                            log.exception("counting a front's refusals failed")
                        continue
                    arrived = time.monotonic()  # its deadline counts from here
                    await places.acquire()
                    task = asyncio.ensure_future(self._serve(call, arrived, answers))
                    running.add(task)  # the loop keeps only a weak reference to a task
                    task.add_done_callback(running.discard)
                # The front is done sending: what it sent is still answered.
                await asyncio.gather(*running, return_exceptions=True)
            except (grpc.RpcError, asyncio.CancelledError):
                pass  # the front went away: its stream ends below
            except Exception:
                log.exception("reading a front's relayed calls failed")
            finally:
                answers.put_nowait(None)

        self._opened(1)
        reader = asyncio.ensure_future(take_calls())
        try:
            while (answer := await answers.get()) is not None:
                await context.write(answer)
                places.release()
        finally:
            self._opened(-1)
            reader.cancel()
            # A call admitted here runs to its end whoever waits for it, as on the public
            # server: its answer has nowhere to go, the work it started is kept.

    async def _serve(self, call: relay_pb2.RelayRequest, arrived: float,
                     answers: asyncio.Queue[relay_pb2.RelayResponse | None]) -> None:
        """Every call gets exactly one answer, whatever ends it: that answer's write gives
        its place back."""
        answer = relayed_answer(call.call_id, grpc.StatusCode.CANCELLED,
                                "the endorser stopped serving the call")
        try:
            answer = await self._answer(call, arrived)
        except Exception:  # a handler's bug: that call's answer, never the stream's end
            log.exception("relayed call %s failed", call.method)
            answer = relayed_answer(call.call_id, grpc.StatusCode.UNKNOWN,
                                    "the endorser failed to serve the call")
        finally:
            answers.put_nowait(answer)

    async def _answer(self, call: relay_pb2.RelayRequest,
                      arrived: float) -> relay_pb2.RelayResponse:
        deadline = arrived + call.timeout_ms / 1000 if call.timeout_ms else None
        if deadline is not None and time.monotonic() >= deadline:
            # Its caller has given up: as gRPC's server does with a call past its deadline
            # before its handler ran, it is not served.
            return relayed_answer(call.call_id, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  "the call's deadline passed before the endorser took it")
        handler = await self._chain(call.method)
        if handler is None:
            return relayed_answer(call.call_id, grpc.StatusCode.UNIMPLEMENTED,
                                  f"method {call.method!r} is not served by this endorser")
        context = RelayedContext(call.caller_certificate_pem, call.method, call.request,
                                 handler.request_deserializer, deadline)
        try:
            if handler.stream_unary is not None:  # as authz.py serves it: read() gives it
                response = await handler.stream_unary(None, context)
            else:
                response = await handler.unary_unary(await context.read(), context)
        except BadRequest:
            response = None
        ok = context.code() in (None, grpc.StatusCode.OK) and response is not None
        return context.answer(call.call_id,
                              handler.response_serializer(response) if ok else None)

    async def _chain(self, method: str) -> grpc.RpcMethodHandler | None:
        """The method's handler behind the interceptors, the first outermost (as gRPC's
        server applies them), built once per method: the interceptors wrap a method once
        (handler_cache.py) and judge each call inside their wrappers."""
        chained = self._chains.get(method)
        if chained is None:
            raw = self._handlers.get(method)
            if raw is None:
                return None

            async def innermost(_details: Any) -> grpc.RpcMethodHandler:
                return raw
            continuation: Callable[[Any], Awaitable[Any]] = innermost
            for interceptor in reversed(self._interceptors):
                continuation = _step(interceptor, continuation)
            chained = self._chains[method] = await continuation(_Details(method))
        return chained


def _step(interceptor: aio.ServerInterceptor,
          inner: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    async def intercepted(details: Any) -> grpc.RpcMethodHandler:
        return await interceptor.intercept_service(inner, details)
    return intercepted
