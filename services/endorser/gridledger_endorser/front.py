"""An endorser front: a process that takes calls on the endorser's public port and hands each
to the endorser over the call relay (core rpc/relay.py), one message of a long-lived stream.

The endorser's calls are judged, counted and served in the one process that holds its state;
what a front spends per call is gRPC's work for the call (TLS, HTTP/2, the call's stream and
status), which on one process was most of a single call's cost (docs/performance.md,
"Endorser fronts"). Several fronts listen on the same address (gRPC sets SO_REUSEPORT; the
kernel spreads connections over them). The endorser starts and watches them (fronts.py).

A front keeps nothing: no state, no keys beyond the endorser's TLS ones. What it forwards is
the caller's request as received and the certificate its handshake verified; it answers with
the endorser's status, message and trailing metadata (a retry hint included). While the relay
is down it answers UNAVAILABLE at once and reports NOT_SERVING; its health otherwise mirrors
the endorser's. Its own bound is the calls it has relayed and not yet had answered: beyond
it, RESOURCE_EXHAUSTED with a retry hint, as the endorser's own shares refuse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gridledger.endorser.v1 import endorser_pb2
from gridledger.rpc.v1 import relay_pb2, relay_pb2_grpc
from gridledger_core.rpc import event_loops
from gridledger_core.rpc.backoff import RETRY_AFTER
from gridledger_core.rpc.relay import RELAY_MESSAGE_BYTES
from gridledger_core.rpc.server import merged_options
from gridledger_core.rpc.tls import CHANNEL_OPTIONS, TlsFiles, receive_limit

log = logging.getLogger("gridledger_endorser.front")

SERVICE = endorser_pb2.DESCRIPTOR.services_by_name["EndorserService"]
# Calls one front has relayed and not yet had answered. The endorser's members' shares
# (128 calls each by default) bound what it takes; this only keeps a front's memory bounded.
MAX_PENDING = 2048
RETRY_AFTER_MS = 200  # the hint when this front is full, as the endorser's shares give
# How soon a lost relay is tried again: doubling from the first to the last.
RECONNECT_FIRST_S = 0.05
RECONNECT_LAST_S = 2.0
ORPHAN_CHECK_S = 0.5
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _answer(code: grpc.StatusCode, details: str,
            trailing: Sequence[tuple[str, str]] = ()) -> relay_pb2.RelayedAnswer:
    return relay_pb2.RelayedAnswer(
        code=code.value[0], details=details,
        trailing_metadata=[relay_pb2.RelayedTrailer(key=k, value=v) for k, v in trailing])


RELAY_DOWN = _answer(grpc.StatusCode.UNAVAILABLE,
                     "the endorser's front lost its relay to the endorser; try again (a "
                     "transaction sent again with the same envelope is not taken twice)")
FRONT_FULL = _answer(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     "this endorser front has too many calls waiting for the endorser",
                     ((RETRY_AFTER, str(RETRY_AFTER_MS)),))


class Relay:
    """The front's one stream to the endorser: calls out, answers matched back by id. The
    stream is opened again whenever it ends; the calls waiting when it ended get RELAY_DOWN
    (the endorser may or may not have served them: its answers are not idempotent to guess,
    its transactions are)."""

    def __init__(self, address: str, on_serving: Callable[[bool], Awaitable[None]],
                 max_pending: int = MAX_PENDING) -> None:
        self._address = address
        self._on_serving = on_serving
        self._max_pending = max_pending
        self._pending: dict[int, asyncio.Future[relay_pb2.RelayedAnswer]] = {}
        self._outgoing: asyncio.Queue[relay_pb2.RelayedCall | None] | None = None
        self._next_id = 0

    async def call(self, method: str, caller_pem: bytes,
                   request: bytes) -> relay_pb2.RelayedAnswer:
        outgoing = self._outgoing
        if outgoing is None:
            return RELAY_DOWN
        if len(self._pending) >= self._max_pending:
            return FRONT_FULL
        self._next_id += 1
        call_id = self._next_id
        answer = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        outgoing.put_nowait(relay_pb2.RelayedCall(
            call_id=call_id, method=method, caller_certificate_pem=caller_pem, request=request))
        try:
            return await answer
        finally:
            self._pending.pop(call_id, None)  # answered, or its caller went away

    async def run(self) -> None:
        """Keep the relay up until cancelled."""
        delay = RECONNECT_FIRST_S
        while True:
            async with aio.insecure_channel(self._address, options=RELAY_CHANNEL_OPTIONS
                                            ) as channel:
                answered = await self._serve(channel)
            await self._on_serving(False)
            if answered:
                delay = RECONNECT_FIRST_S
            await asyncio.sleep(delay)
            delay = min(RECONNECT_LAST_S, 2 * delay)

    async def _serve(self, channel: aio.Channel) -> bool:
        """One stream's life; whether it carried anything."""
        outgoing: asyncio.Queue[relay_pb2.RelayedCall | None] = asyncio.Queue()
        answered = False
        mirror = asyncio.ensure_future(self._mirror_health(channel))
        stream = relay_pb2_grpc.CallRelayStub(channel).Relay(_drain(outgoing))
        try:
            await stream.wait_for_connection()
            self._outgoing = outgoing
            async for answer in stream:
                answered = True
                waiting = self._pending.get(answer.call_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer)
        except grpc.RpcError as exc:
            log.warning("the relay to the endorser ended: %s", _why(exc))
        finally:
            self._outgoing = None
            stream.cancel()
            outgoing.put_nowait(None)  # ends gRPC's task that reads `outgoing`
            mirror.cancel()
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_result(RELAY_DOWN)
        return answered

    async def _mirror_health(self, channel: aio.Channel) -> None:
        """The endorser's overall health, as this front's."""
        try:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""))
            async for status in watch:
                await self._on_serving(status.status == _SERVING)
        except grpc.RpcError as exc:
            log.warning("watching the endorser's health failed: %s", _why(exc))
        await self._on_serving(False)


RELAY_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS,
                         ("grpc.max_send_message_length", RELAY_MESSAGE_BYTES),
                         ("grpc.max_receive_message_length", RELAY_MESSAGE_BYTES)]


async def _drain(queue: asyncio.Queue[relay_pb2.RelayedCall | None]
                 ) -> AsyncIterator[relay_pb2.RelayedCall]:
    """The stream's calls, until None (its stream ended)."""
    while (call := await queue.get()) is not None:
        yield call


def _why(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'error'}: {details}"


def relaying_handler(relay: Relay, method: str) -> grpc.RpcMethodHandler:
    """A unary method served by the endorser through `relay`: the request's bytes as
    received, the answer's status and bytes as given."""
    async def relayed(request: bytes, context: aio.ServicerContext) -> bytes | None:
        peer = context.auth_context().get("x509_pem_cert")
        answer = await relay.call(method, peer[0] if peer else b"", request)
        if answer.code:
            context.set_code(_CODES.get(answer.code, grpc.StatusCode.UNKNOWN))
            context.set_details(answer.details)
            if answer.trailing_metadata:
                context.set_trailing_metadata(
                    tuple((t.key, t.value) for t in answer.trailing_metadata))
            return None
        return answer.response
    return grpc.unary_unary_rpc_method_handler(relayed)


class Front:
    def __init__(self, listen: str, tls: TlsFiles, relay_socket: Path,
                 receive_bytes: int) -> None:
        self._listen = listen
        self._tls = tls
        self._health = health.aio.HealthServicer()
        self._services = ["", SERVICE.full_name]
        self.relay = Relay(f"unix:{relay_socket}", self._publish)
        self._receive_bytes = receive_bytes
        self._server: aio.Server | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self.port = 0

    async def _publish(self, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        for service in self._services:
            await self._health.set(service, status)

    async def start(self) -> None:
        for service in self._services:
            await self._health.set(service, _NOT_SERVING)  # until the endorser says so
        server = aio.server(options=merged_options([receive_limit(self._receive_bytes)]))
        handlers = {m.name: relaying_handler(self.relay, f"/{SERVICE.full_name}/{m.name}")
                    for m in SERVICE.methods}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE.full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        self.port = server.add_secure_port(self._listen, self._tls.server_credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {self._listen}")
        self._relay_task = asyncio.ensure_future(self.relay.run())
        await server.start()
        self._server = server

    async def stop(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gridledger-endorser-front",
                                     description="a front of a GridLedger endorser (started "
                                                 "by the endorser's --fronts)")
    parser.add_argument("--name", required=True, help="the endorser's name (its TLS files)")
    parser.add_argument("--consortium-dir", type=Path, required=True)
    parser.add_argument("--listen", required=True, help="the endorser's public gRPC address")
    parser.add_argument("--relay-socket", type=Path, required=True)
    parser.add_argument("--receive-bytes", type=int, required=True,
                        help="the largest request payload the endorser takes")
    parser.add_argument("--event-loop", choices=event_loops.CHOICES, default=event_loops.DEFAULT)
    parser.add_argument("--endorser-pid", type=int, required=True,
                        help="the endorser that starts this front: it stops when that is gone")
    parser.add_argument("--grace-s", type=float, default=5.0)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    front = Front(args.listen, TlsFiles.for_node(args.consortium_dir, args.name),
                  args.relay_socket, args.receive_bytes)
    await front.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orphaned = asyncio.ensure_future(_until_orphaned(args.endorser_pid, stop))
    log.info("%s front serving %s through %s", args.name, args.listen, args.relay_socket)
    await stop.wait()
    orphaned.cancel()
    await front.stop(args.grace_s)


async def _until_orphaned(parent: int, stop: asyncio.Event) -> None:
    """Stop when the endorser that started this front is gone (killed, not stopped): a
    front left behind would keep a share of the port's connections for an endorser that
    did not start it."""
    while os.getppid() == parent:  # already another when it died before this front began
        await asyncio.sleep(ORPHAN_CHECK_S)
    log.error("the endorser (pid %d) that started this front is gone; stopping", parent)
    stop.set()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = event_loops.new_event_loop(args.event_loop)
    try:
        loop.run_until_complete(_serve(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
