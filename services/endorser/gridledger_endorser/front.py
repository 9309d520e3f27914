"""An endorser front: a process that takes calls on the endorser's public port and hands each
to the endorser over the call relay (core rpc/relay.py), one message of a long-lived stream.

The endorser's calls are judged, counted and served in the one process that holds its state;
what a front spends per call is gRPC's work for the call (TLS, HTTP/2, the call's stream and
status), which on one process was most of a single call's cost (docs/performance.md,
thirty-fifth round). Several fronts listen on the same address (gRPC sets SO_REUSEPORT; the
kernel spreads connections over them). The endorser starts and watches them (fronts.py).

A front keeps no state and no keys beyond the endorser's TLS ones. Before a call's request
arrives it does what the endorser's authorisation does then (`Admission`): the caller's
certificate must chain to a member's TLS CA, and the member holds a place of its share of
this front's calls until the endorser has answered. It forwards the request as received
with the certificate its handshake verified, and answers with the endorser's status,
message and trailing metadata (a retry hint included). While the relay is down it answers
UNAVAILABLE at once and reports NOT_SERVING; its health otherwise mirrors the endorser's.
Its own bound is the calls it has relayed and not yet had answered: beyond it,
RESOURCE_EXHAUSTED with a retry hint, as the endorser's own shares refuse. It serves no
metrics: what it answers itself it reports to the endorser on the relay (`Refusals`).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gridledger.endorser.v1 import endorser_pb2
from gridledger.rpc.v1 import relay_pb2, relay_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.rpc import event_loops
from gridledger_core.rpc.authz import Refused, ShareFull, short_name, take_place
from gridledger_core.rpc.backoff import RETRY_AFTER
from gridledger_core.rpc.call_shares import LARGE_REQUEST_METHODS, RETRY_AFTER_MS, CallShares
from gridledger_core.rpc.errors import describe_rpc_error
from gridledger_core.rpc.peer_identity import PeerIdentities
from gridledger_core.rpc.relay import RELAY_MESSAGE_BYTES, relayed_answer
from gridledger_core.rpc.server import merged_options
from gridledger_core.rpc.tls import CHANNEL_OPTIONS, TlsFiles, receive_limit

log = logging.getLogger("gridledger_endorser.front")

SERVICE = endorser_pb2.DESCRIPTOR.services_by_name["EndorserService"]
# Calls one front has relayed and not yet had answered. The endorser's members' shares
# (128 calls each by default) bound what it takes; this only keeps a front's memory bounded.
MAX_PENDING = 2048
# How soon a lost relay is tried again: doubling from the first to the last.
RECONNECT_FIRST_S = 0.05
RECONNECT_LAST_S = 2.0
ORPHAN_CHECK_S = 0.5
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


RELAY_DOWN = relayed_answer(
    0, grpc.StatusCode.UNAVAILABLE,
    "the endorser's front lost its relay to the endorser; try again (a transaction sent again "
    "with the same envelope is not taken twice)")
DEADLINE_PASSED = relayed_answer(
    0, grpc.StatusCode.DEADLINE_EXCEEDED,
    "the call's deadline passed before this front could relay it to the endorser")
FRONT_FULL = relayed_answer(
    0, grpc.StatusCode.RESOURCE_EXHAUSTED,
    "this endorser front has too many calls waiting for the endorser",
    ((RETRY_AFTER, str(RETRY_AFTER_MS)),))  # the hint the endorser's shares give
_OWN_ANSWERS = (("relay_down", RELAY_DOWN), ("deadline_passed", DEADLINE_PASSED),
                ("front_full", FRONT_FULL))
# How often a front reports its own refusals to the endorser (when it has any).
REPORT_EVERY_S = 1.0


class _Waiting:
    """A relayed call until its answer: the caller's future, when its deadline passes
    (this process's clock), and what to give back once it is over (its member's share of
    the front), given back exactly once wherever the call ends."""

    __slots__ = ("_release", "answer", "deadline")

    def __init__(self, answer: asyncio.Future[relay_pb2.RelayResponse],
                 deadline: float | None, release: Callable[[], None]) -> None:
        self.answer, self.deadline, self._release = answer, deadline, release

    def settle(self, answer: relay_pb2.RelayResponse) -> None:
        if not self.answer.done():
            self.answer.set_result(answer)
        self._release()
        self._release = _nothing


def _nothing() -> None:
    pass


class Refusals:
    """The calls this front answered itself since its last report to the endorser, which
    counts them in its metrics (a front serves none). Bounded: a count per reason, and per
    member of the consortium (whose names alone reach `member_share`)."""

    def __init__(self) -> None:
        self._counts = relay_pb2.FrontRefusals()

    def member_share(self, member: str) -> None:
        self._counts.member_share_by_member[member] += 1

    def given(self, answer: relay_pb2.RelayResponse) -> None:
        """One of this front's own answers, given: counted by its reason."""
        for reason, own in _OWN_ANSWERS:
            if answer is own:
                setattr(self._counts, reason, getattr(self._counts, reason) + 1)

    def no_request(self) -> None:
        self._counts.no_request += 1

    def not_a_member(self) -> None:
        self._counts.not_a_member += 1

    def take(self) -> relay_pb2.FrontRefusals | None:
        """What to report, counted afresh from now; None when there is nothing."""
        if self._counts.ByteSize() == 0:
            return None
        taken, self._counts = self._counts, relay_pb2.FrontRefusals()
        return taken


class Relay:
    """The front's one stream to the endorser: calls out, answers matched back by id. The
    stream is opened again whenever it ends; the calls waiting when it ended get RELAY_DOWN
    (the endorser may or may not have served them: its answers are not idempotent to guess,
    its transactions are)."""

    def __init__(self, address: str, on_serving: Callable[[bool], Awaitable[None]],
                 max_pending: int = MAX_PENDING, refusals: Refusals | None = None) -> None:
        """`refusals`: what this front answered itself, reported on the stream."""
        self._address = address
        self._on_serving = on_serving
        self._max_pending = max_pending
        self._refusals = refusals if refusals is not None else Refusals()
        self._pending: dict[int, _Waiting] = {}
        self._outgoing: asyncio.Queue[relay_pb2.RelayRequest | None] | None = None
        self._next_id = 0

    async def call(self, method: str, caller_pem: bytes, request: bytes,
                   timeout: float | None = None,
                   release: Callable[[], None] = _nothing) -> relay_pb2.RelayResponse:
        """The endorser's answer to one call (RELAY_DOWN, FRONT_FULL from this front).
        `release` is called once the call is over. A call keeps its place (and whatever
        `release` gives back) until its answer comes, also when its caller gives up first:
        the endorser is serving it, so it counts all the same."""
        outgoing = self._outgoing
        if outgoing is None or len(self._pending) >= self._max_pending:
            release()
            return self._refused(RELAY_DOWN if outgoing is None else FRONT_FULL)
        self._next_id += 1
        call_id = self._next_id
        answer = asyncio.get_running_loop().create_future()
        deadline = time.monotonic() + timeout if timeout is not None else None
        self._pending[call_id] = _Waiting(answer, deadline, release)
        outgoing.put_nowait(relay_pb2.RelayRequest(
            call_id=call_id, method=method, caller_certificate_pem=caller_pem, request=request))
        return await answer  # a caller that goes away cancels `answer`, not its place

    def _refused(self, answer: relay_pb2.RelayResponse) -> relay_pb2.RelayResponse:
        """One of this front's own answers, counted for its report."""
        self._refusals.given(answer)
        return answer

    async def run(self) -> None:
        """Keep the relay up until cancelled."""
        delay = RECONNECT_FIRST_S
        while True:
            answered = False
            try:
                async with aio.insecure_channel(self._address, options=RELAY_CHANNEL_OPTIONS
                                                ) as channel:
                    answered = await self._serve(channel)
            except asyncio.CancelledError:
                if _stopping():
                    raise
                # As in _serve: only stopping ends the relay, whatever else cancelled.
                log.warning("the relay to the endorser was cancelled; connecting again")
            except Exception:  # never a silent end behind SERVING: log, report, try again
                log.exception("the relay to the endorser failed")
            await self._on_serving(False)
            if answered:
                delay = RECONNECT_FIRST_S
            await asyncio.sleep(delay)
            delay = min(RECONNECT_LAST_S, 2 * delay)

    async def _serve(self, channel: aio.Channel) -> bool:
        """One stream's life; whether it carried anything."""
        outgoing: asyncio.Queue[relay_pb2.RelayRequest | None] = asyncio.Queue()
        answered = False
        stream = relay_pb2_grpc.CallRelayServiceStub(channel).Relay(self._drain(outgoing))
        mirror: asyncio.Task[None] | None = None
        reports: asyncio.Task[None] | None = None
        try:
            await stream.wait_for_connection()
            self._outgoing = outgoing
            # Its health only once calls can go: a watch that ends ends this stream too.
            mirror = asyncio.ensure_future(self._mirror_health(channel, stream))
            reports = asyncio.ensure_future(self._report(outgoing))
            async for answer in stream:
                answered = True
                waiting = self._pending.pop(answer.call_id, None)
                if waiting is not None:
                    waiting.settle(answer)
        except grpc.RpcError as exc:
            log.warning("the relay to the endorser ended: %s", describe_rpc_error(exc))
        except asyncio.CancelledError:
            if _stopping():
                raise
            # gRPC raises CancelledError for a call cancelled in this process: the health
            # watch cancels the stream when it ends. Connect again (as soon as a stream
            # that carried calls would: `answered` is kept).
            log.warning("the relay to the endorser was cancelled; connecting again")
        finally:
            self._outgoing = None
            stream.cancel()
            outgoing.put_nowait(None)  # ends gRPC's task that reads `outgoing`
            for task in (mirror, reports):
                if task is not None:
                    task.cancel()
            # The endorser runs what it took to its end: the bound holds per stream, and
            # the endorser's own shares bound what runs there.
            waiting_calls, self._pending = self._pending, {}
            for waiting in waiting_calls.values():
                # Counted only for a caller still there to be told.
                waiting.settle(RELAY_DOWN if waiting.answer.done()
                               else self._refused(RELAY_DOWN))
        return answered

    async def _drain(self, queue: asyncio.Queue[relay_pb2.RelayRequest | None]
                     ) -> AsyncIterator[relay_pb2.RelayRequest]:
        """The stream's calls, until None (its stream ended), each with what is left of its
        caller's deadline as it leaves. One whose caller went away, or whose deadline passed,
        before it left is not sent; its place is given back."""
        while (call := await queue.get()) is not None:
            if not call.call_id:  # a report of this front's refusals
                yield call
                continue
            waiting = self._pending.get(call.call_id)
            if waiting is None:
                continue
            if waiting.answer.cancelled():
                del self._pending[call.call_id]
                waiting.settle(RELAY_DOWN)
                continue
            if waiting.deadline is not None:
                left = waiting.deadline - time.monotonic()
                if left <= 0:
                    del self._pending[call.call_id]
                    waiting.settle(self._refused(DEADLINE_PASSED))
                    continue
                call.timeout_ms = max(1, int(left * 1000))
            yield call

    async def _report(self, outgoing: asyncio.Queue[relay_pb2.RelayRequest | None]) -> None:
        """This front's own refusals, every REPORT_EVERY_S while it has any (a report on a
        stream that is then lost is lost with it: at most one interval's counts)."""
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            refusals = self._refusals.take()
            if refusals is not None:
                outgoing.put_nowait(relay_pb2.RelayRequest(refusals=refusals))

    async def _mirror_health(self, channel: aio.Channel, stream: Any) -> None:
        """The endorser's overall health, as this front's; however the watch ends, the
        stream ends with it (connect again, watch included)."""
        try:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""))
            async for status in watch:
                await self._on_serving(status.status == _SERVING)
        except grpc.RpcError as exc:
            log.warning("watching the endorser's health failed: %s", describe_rpc_error(exc))
        except Exception:
            log.exception("watching the endorser's health failed")
        finally:
            stream.cancel()
        await self._on_serving(False)


def _stopping() -> bool:
    """Whether this task has been asked to stop (Task.cancel)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


RELAY_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS,
                         ("grpc.max_send_message_length", RELAY_MESSAGE_BYTES),
                         ("grpc.max_receive_message_length", RELAY_MESSAGE_BYTES)]


class Admission:
    """What the endorser's authorisation does before a call's request arrives (authz.py's
    `take_place`): the caller's certificate must chain to a member's TLS CA, and the call
    takes a place of that member's share of this front's calls until the endorser has
    answered it, so a member that opens calls and sends their requests slowly, or never, or
    sends and cancels, holds only its share of the front. The endorser judges everything
    again with the call (role, account, the request, its own shares)."""

    def __init__(self, genesis: Genesis, calls_per_member: int,
                 refusals: Refusals | None = None) -> None:
        self._identities = PeerIdentities(genesis)
        self.shares = CallShares(calls_per_member)
        self.refusals = refusals if refusals is not None else Refusals()

    def enter(self, method: str, pem: bytes) -> tuple[str | None, relay_pb2.RelayResponse | None]:
        """(the member whose place was taken, None) or (None, the refusal), counted."""
        try:
            subject = take_place(self._identities, self.shares, method, pem,
                                 method in LARGE_REQUEST_METHODS)
        except ShareFull as exc:
            self.refusals.member_share(exc.member)
            return None, relayed_answer(0, exc.code, str(exc), exc.trailing)
        except Refused as exc:
            self.refusals.not_a_member()
            return None, relayed_answer(0, exc.code, str(exc), exc.trailing)
        return subject.org, None


def relaying_handler(relay: Relay, admission: Admission, method: str) -> grpc.RpcMethodHandler:
    """A unary method served by the endorser through `relay`: taken as a stream, so that
    the caller is counted before its request arrives (as authz.py serves every method),
    then the request's bytes as received, the answer's status, trailers and bytes as
    given."""
    large = method in LARGE_REQUEST_METHODS

    async def relayed(_requests: Any, context: aio.ServicerContext) -> bytes | None:
        peer = context.auth_context().get("x509_pem_cert")
        pem = peer[0] if peer else b""
        member, refusal = admission.enter(method, pem)
        if member is None:
            return _give(context, refusal)  # type: ignore[arg-type]
        handed_over = False
        try:
            request = await context.read()
            if request is aio.EOF:
                admission.refusals.no_request()
                return _give(context, relayed_answer(
                    0, grpc.StatusCode.INVALID_ARGUMENT,
                    f"{short_name(method)} requires exactly one request message"))
            # From here the relay gives the share back, when the endorser has answered:
            # a caller that goes away must not free its member's place while the call runs.
            handed_over = True
            return _give(context, await relay.call(
                method, pem, request, context.time_remaining(),
                release=lambda: admission.shares.leave(member, large)))
        finally:
            if not handed_over:
                admission.shares.leave(member, large)
    return grpc.stream_unary_rpc_method_handler(relayed)


def _give(context: aio.ServicerContext, answer: relay_pb2.RelayResponse) -> bytes | None:
    """End the front's call as the endorser's answer says."""
    if answer.trailing_metadata:
        context.set_trailing_metadata(tuple(
            (t.key, t.value if t.key.endswith("-bin") else t.value.decode("utf-8", "replace"))
            for t in answer.trailing_metadata))
    if answer.code:
        context.set_code(_CODES.get(answer.code, grpc.StatusCode.UNKNOWN))
        context.set_details(answer.details)
        return None
    return answer.response


class Front:
    def __init__(self, listen: str, tls: TlsFiles, relay_socket: Path,
                 receive_bytes: int, admission: Admission) -> None:
        self._listen = listen
        self._tls = tls
        self._admission = admission
        self._health = health.aio.HealthServicer()
        self._services = ["", SERVICE.full_name]
        self.relay = Relay(f"unix:{relay_socket}", self._publish,
                           refusals=admission.refusals)
        self._receive_bytes = receive_bytes
        self._server: aio.Server | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def relay_task(self) -> asyncio.Task[None]:
        """The task keeping the relay up (started by `start`)."""
        assert self._relay_task is not None, "the front has not started"
        return self._relay_task

    async def _publish(self, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        for service in self._services:
            await self._health.set(service, status)

    async def start(self) -> None:
        for service in self._services:
            await self._health.set(service, _NOT_SERVING)  # until the endorser says so
        server = aio.server(options=merged_options([receive_limit(self._receive_bytes)]))
        handlers = {m.name: relaying_handler(self.relay, self._admission,
                                             f"/{SERVICE.full_name}/{m.name}")
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
            await asyncio.wait({self._relay_task})  # never raises, whatever ended it


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
    parser.add_argument("--calls-per-member", type=int, required=True,
                        help="the calls one member may have in progress on this front")
    parser.add_argument("--endorser-pid", type=int, required=True,
                        help="the endorser that starts this front: it stops when that is gone")
    parser.add_argument("--grace-s", type=float, default=5.0)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> int:
    """Serve until stopped (0), or until the relay ends, which it should never do (1)."""
    genesis = Genesis.load(args.consortium_dir / "genesis.json")
    front = Front(args.listen, TlsFiles.for_node(args.consortium_dir, args.name),
                  args.relay_socket, args.receive_bytes,
                  Admission(genesis, args.calls_per_member))
    await front.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orphaned = asyncio.ensure_future(_until_orphaned(args.endorser_pid, stop))
    log.info("%s front serving %s through %s", args.name, args.listen, args.relay_socket)
    stopped = asyncio.ensure_future(stop.wait())
    relay = front.relay_task
    await asyncio.wait({stopped, relay}, return_when=asyncio.FIRST_COMPLETED)
    orphaned.cancel()
    stopped.cancel()
    if not relay.done():
        await front.stop(args.grace_s)
        return 0
    # The relay only ends when stopped: a front without one would answer UNAVAILABLE for
    # good, so it exits and the endorser's supervisor (fronts.py) starts it again.
    log.error("the relay to the endorser ended (%s); exiting to be started again",
              relay.exception() if not relay.cancelled() else "cancelled")
    await front.stop(args.grace_s)
    return 1


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
        status = loop.run_until_complete(_serve(args))
    finally:
        loop.close()
    sys.exit(status)


if __name__ == "__main__":
    main()
