"""The call relay between an endorser's fronts and the process that serves its calls (core
rpc/relay.py, gridledger_endorser/front.py's Relay): status, message, trailers and the
caller's certificate carried both ways; no relayed content ends the stream; a lost relay
answers UNAVAILABLE at once and comes back."""

from __future__ import annotations

import asyncio
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger.rpc.v1 import relay_pb2, relay_pb2_grpc
from gridledger_core.rpc.relay import (
    MAX_SOCKET_PATH,
    CallRelayServicer,
    RelayedContext,
    method_handlers,
    prepare_socket,
    relayed_answer,
)
from gridledger_endorser import front as front_module
from gridledger_endorser.front import DEADLINE_PASSED, FRONT_FULL, RELAY_DOWN, Relay

SERVICE = "/gridledger.endorser.v1.EndorserService/"
PEM = b"-----BEGIN CERTIFICATE-----\nthe caller\n-----END CERTIFICATE-----\n"


class Servicer(endorser_pb2_grpc.EndorserServiceServicer):
    async def GetBook(self, request: endorser_pb2.GetBookRequest,
                      context: Any) -> endorser_pb2.GetBookResponse:
        return endorser_pb2.GetBookResponse(slot_start=request.slot_start, ledger_height=7)

    async def RequestOptions(self, request: Any, context: Any) -> None:
        context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        context.set_details("full")
        context.set_trailing_metadata((("retry-after-ms", "250"),))
        return None

    async def SubmitTransaction(self, request: Any, context: Any) -> None:
        raise RuntimeError("a bug")

    release = asyncio.Event()

    async def SubmitBatch(self, request: Any, context: Any) -> None:
        raise asyncio.CancelledError  # e.g. a shared future cancelled under it

    async def RequestOptionsBatch(self, request: Any, context: Any
                                  ) -> endorser_pb2.RequestOptionsBatchResponse:
        await Servicer.release.wait()
        return endorser_pb2.RequestOptionsBatchResponse()


class Recording(aio.ServerInterceptor):
    """Serves every method as authz.py does (its request read with `context.read()`) and
    records who called what."""

    def __init__(self, name: str, seen: list[tuple[str, str, bytes]]) -> None:
        self._name, self._seen = name, seen

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: Any) -> Any:
        handler = await continuation(details)
        name, seen = self._name, self._seen

        async def judged(requests: Any, context: Any) -> Any:
            seen.append((name, details.method, context.auth_context()["x509_pem_cert"][0]))
            if handler.stream_unary is not None:  # an inner interceptor's: it reads
                return await handler.stream_unary(requests, context)
            return await handler.unary_unary(await context.read(), context)
        return grpc.stream_unary_rpc_method_handler(
            judged, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class Serving:
    def __init__(self, socket: Path, health_servicer: Any = None) -> None:
        self.socket = socket
        self.health = health_servicer or health.aio.HealthServicer()
        self.seen: list[tuple[str, str, bytes]] = []
        self.server: aio.Server | None = None

    async def start(self) -> None:
        handlers = method_handlers([(endorser_pb2_grpc.add_EndorserServiceServicer_to_server,
                                     Servicer())])
        server = aio.server()
        relay_pb2_grpc.add_CallRelayServiceServicer_to_server(
            CallRelayServicer(handlers, [Recording("outer", self.seen),
                                         Recording("inner", self.seen)],
                              members=("utility", "community")), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        assert server.add_insecure_port(f"unix:{prepare_socket(self.socket)}")
        await server.start()
        self.server = server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(None)


async def _healthy(_serving: bool) -> None:
    return None


def _run(test: Callable[[Serving, Relay], Awaitable[None]], tmp_path: Path,
         health_servicer: Any = None,
         on_serving: Callable[[bool], Awaitable[None]] = _healthy) -> None:
    async def main() -> None:
        serving = Serving(tmp_path / "relay" / "calls.sock", health_servicer)
        await serving.start()
        relay = Relay(f"unix:{serving.socket}", on_serving)
        task = asyncio.ensure_future(relay.run())
        try:
            await _until(lambda: relay._outgoing is not None)
            await test(serving, relay)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await serving.stop()
    asyncio.run(main())


async def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_an_answer_carries_the_response_and_the_caller_passes_every_interceptor_in_order(
        tmp_path: Path) -> None:
    async def test(serving: Serving, relay: Relay) -> None:
        request = endorser_pb2.GetBookRequest(slot_start=3600).SerializeToString()
        answer = await relay.call(SERVICE + "GetBook", PEM, request)
        assert answer.code == 0
        assert endorser_pb2.GetBookResponse.FromString(answer.response) == \
            endorser_pb2.GetBookResponse(slot_start=3600, ledger_height=7)
        assert serving.seen == [("outer", SERVICE + "GetBook", PEM),
                                ("inner", SERVICE + "GetBook", PEM)]
    _run(test, tmp_path)


def test_a_refusal_carries_its_code_message_and_retry_hint(tmp_path: Path) -> None:
    async def test(_serving: Serving, relay: Relay) -> None:
        answer = await relay.call(SERVICE + "RequestOptions", PEM,
                                  endorser_pb2.RequestOptionsRequest().SerializeToString())
        assert (answer.code, answer.details, answer.response) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "full", b"")
        assert [(t.key, t.value) for t in answer.trailing_metadata] == [
            ("retry-after-ms", b"250")]
    _run(test, tmp_path)


def test_no_relayed_content_ends_the_stream(tmp_path: Path) -> None:
    """Tried as a broken or hostile front would: a method the endorser does not serve, bytes
    that are no request, a call whose handler fails. Each is that call's answer; the next
    call on the same stream is served."""
    async def test(_serving: Serving, relay: Relay) -> None:
        unknown = await relay.call("/gridledger.orderer.v1.OrdererService/Broadcast", PEM, b"")
        garbage = await relay.call(SERVICE + "GetBook", PEM, b"\xff\xff\xff")
        bug = await relay.call(SERVICE + "SubmitTransaction", PEM, b"")
        assert unknown.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert "is not served by this endorser" in unknown.details
        assert garbage.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert garbage.details == "the request is not a GetBook request"
        assert bug.code == grpc.StatusCode.UNKNOWN.value[0]
        fine = await relay.call(SERVICE + "GetBook", PEM, b"")
        assert fine.code == 0
    _run(test, tmp_path)


def test_many_calls_at_once_each_get_their_own_answer(tmp_path: Path) -> None:
    async def test(_serving: Serving, relay: Relay) -> None:
        answers = await asyncio.gather(*[
            relay.call(SERVICE + "GetBook", PEM,
                       endorser_pb2.GetBookRequest(slot_start=slot).SerializeToString())
            for slot in range(200)])
        assert [endorser_pb2.GetBookResponse.FromString(a.response).slot_start
                for a in answers] == list(range(200))
    _run(test, tmp_path)


def test_a_lost_relay_answers_unavailable_at_once_and_comes_back(tmp_path: Path) -> None:
    async def test(serving: Serving, relay: Relay) -> None:
        await serving.stop()
        await _until(lambda: relay._outgoing is None)
        assert await relay.call(SERVICE + "GetBook", PEM, b"") == RELAY_DOWN
        assert RELAY_DOWN.code == grpc.StatusCode.UNAVAILABLE.value[0]
        await serving.start()  # the same socket, as a restarted endorser binds it
        await _until(lambda: relay._outgoing is not None)
        assert (await relay.call(SERVICE + "GetBook", PEM, b"")).code == 0
    _run(test, tmp_path)


class CountedWatches(health_pb2_grpc.HealthServicer):
    """Counts the watches; SERVING on every one. The first then ends with an error (unless
    `first_ends` is False), as an endorser's health service may end one while the relay's
    own stream stays open."""

    def __init__(self, first_ends: bool = True) -> None:
        self.watches = 0
        self._first_ends = first_ends  # False: every watch stays open

    async def Watch(self, request: Any, context: Any) -> Any:
        self.watches += 1
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        if self.watches == 1 and self._first_ends:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the watch ended")
        await asyncio.Event().wait()  # the next ones stay open until the test ends


def test_a_relay_whose_health_watch_ends_first_connects_again(tmp_path: Path) -> None:
    """The watch ending cancels the relay's stream so that both are opened again. gRPC
    raises CancelledError for a call cancelled in this process, and that ended the front's
    relay for good: it answered UNAVAILABLE until the front was restarted."""
    async def test(serving: Serving, relay: Relay) -> None:
        await _until(lambda: serving.health.watches >= 2)
        await _until(lambda: relay._outgoing is not None)
        assert (await relay.call(SERVICE + "GetBook", PEM, b"")).code == 0
    _run(test, tmp_path, CountedWatches())


def test_a_health_watch_that_fails_otherwise_also_opens_the_relay_again(
        tmp_path: Path) -> None:
    """A watch that fails other than with an RpcError (here the front's own health update)
    left the relay's stream open with nobody mirroring the endorser's health: the front's
    health stayed whatever it last was."""
    told: list[bool] = []

    async def failing_once(serving: bool) -> None:
        told.append(serving)
        if told.count(True) == 1 and serving:
            raise RuntimeError("a bug updating the front's health")

    async def test(serving: Serving, relay: Relay) -> None:
        await _until(lambda: serving.health.watches >= 2)
        await _until(lambda: relay._outgoing is not None)
        assert (await relay.call(SERVICE + "GetBook", PEM, b"")).code == 0
    _run(test, tmp_path, CountedWatches(first_ends=False), failing_once)


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_fronts_own_refusals_reach_the_endorsers_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A front serves no metrics: the calls it answered itself were counted nowhere. It
    reports them on its relay; the endorser counts a member's share refusals in the series
    its own shares count (members of the consortium only) and the rest by reason; a report
    takes no place and gets no answer."""
    monkeypatch.setattr(front_module, "REPORT_EVERY_S", 0.02)
    member = ("gridledger_rpc_member_calls_refused_total", {"member": "utility"})
    stranger = ("gridledger_rpc_member_calls_refused_total", {"member": "no-such-org"})
    reasons = {r: ("gridledger_rpc_front_refused_total", {"reason": r})
               for r in ("relay_down", "front_full", "no_request", "not_a_member")}
    before = {k: _sample(*v) for k, v in [*reasons.items(), ("member", member)]}

    async def test(serving: Serving, relay: Relay) -> None:
        refusals = relay._refusals
        refusals.member_share("utility")
        refusals.member_share("utility")
        refusals.member_share("no-such-org")
        refusals.given(RELAY_DOWN)
        refusals.given(FRONT_FULL)
        refusals.given(relayed_answer(1, grpc.StatusCode.UNAVAILABLE, RELAY_DOWN.details))
        refusals.no_request()
        await _until(lambda: _sample(*reasons["no_request"]) > before["no_request"])
        assert _sample(*member) == before["member"] + 2
        assert _sample(*stranger) == 0.0
        assert _sample(*reasons["relay_down"]) == before["relay_down"] + 1  # its own only
        assert _sample(*reasons["front_full"]) == before["front_full"] + 1
        assert _sample(*reasons["not_a_member"]) == before["not_a_member"]
        assert refusals.take() is None  # reported: counted afresh
        assert serving.seen == []  # no call reached a handler
        assert (await relay.call(SERVICE + "GetBook", PEM, b"")).code == 0
    _run(test, tmp_path)


def test_a_fronts_own_answers_are_counted_where_it_gives_them(tmp_path: Path) -> None:
    """Counted in the relay, not after the caller's handler resumes: a call past its
    deadline has its handler cancelled by gRPC at that moment, so counting there missed
    it."""
    async def test(_serving: Serving, relay: Relay) -> None:
        assert await relay.call(SERVICE + "GetBook", PEM, b"", timeout=1e-9) == DEADLINE_PASSED
        report = relay._refusals.take()
        assert report is not None and report.deadline_passed == 1
        relay._max_pending = 0
        assert await relay.call(SERVICE + "GetBook", PEM, b"") == FRONT_FULL
        report = relay._refusals.take()
        assert report is not None and report.front_full == 1
    _run(test, tmp_path)


def test_a_relayed_context_gives_the_request_once_and_the_caller_as_tls_would() -> None:
    request = endorser_pb2.GetBookRequest(slot_start=60)
    context = RelayedContext(PEM, SERVICE + "GetBook", request.SerializeToString(),
                             endorser_pb2.GetBookRequest.FromString, time.monotonic() + 5)
    assert asyncio.run(context.read()) == request
    assert asyncio.run(context.read()) is aio.EOF
    assert context.auth_context() == {"x509_pem_cert": [PEM]}
    assert 4 < context.time_remaining() <= 5  # type: ignore[operator]
    unsigned = RelayedContext(b"", SERVICE + "GetBook", b"", endorser_pb2.GetBookRequest.FromString)
    assert unsigned.auth_context() == {}  # no certificate: authz refuses it
    assert unsigned.time_remaining() is None
    assert context.code() is None
    assert context.answer(5, b"body").response == b"body"
    assert context.answer(5, None).code == grpc.StatusCode.UNKNOWN.value[0]  # no response
    context.set_trailing_metadata((("retry-after-ms", "9"), ("proof-bin", b"\x00\x01")))
    context.set_code(grpc.StatusCode.PERMISSION_DENIED)
    answer = context.answer(5, b"body")
    assert answer.response == b""  # never a body with a refusal
    assert [(t.key, t.value) for t in answer.trailing_metadata] == [
        ("retry-after-ms", b"9"), ("proof-bin", b"\x00\x01")]


def test_the_socket_directory_is_private_and_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "relay" / "calls.sock"
    assert prepare_socket(path) == path  # the directory made, private
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # an earlier run's
    stale.close()
    assert prepare_socket(path) == path
    assert not path.exists()
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        prepare_socket(tmp_path / ("d" * MAX_SOCKET_PATH) / "calls.sock")


def test_a_directory_open_to_others_is_refused_not_changed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ValueError, match="must be this user's alone"):
        prepare_socket(shared / "calls.sock")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_a_file_that_is_no_socket_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "relay" / "calls.sock"
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"the operator's")
    with pytest.raises(ValueError, match="is not a socket"):
        prepare_socket(path)
    assert path.read_bytes() == b"the operator's"


def test_a_call_whose_deadline_passed_before_it_was_taken_is_not_served() -> None:
    seen: list[tuple[str, str, bytes]] = []
    handlers = method_handlers([(endorser_pb2_grpc.add_EndorserServiceServicer_to_server,
                                 Servicer())])
    relay = CallRelayServicer(handlers, [Recording("only", seen)])
    call = relay_pb2.RelayRequest(call_id=3, method=SERVICE + "GetBook",
                                 caller_certificate_pem=PEM, timeout_ms=100)

    async def main() -> None:
        late = await relay._answer(call, arrived=time.monotonic() - 0.2)  # waited 200 ms
        assert (late.call_id, late.code) == (3, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
        assert seen == []  # neither judged nor served
        on_time = await relay._answer(call, arrived=time.monotonic())
        assert on_time.code == 0 and len(seen) == 1
    asyncio.run(main())


def test_a_caller_that_goes_away_keeps_its_place_until_the_endorser_answers(
        tmp_path: Path) -> None:
    """The endorser serves a call whose caller gave up after it was relayed, so the front's
    bound, and its member's share of the front (what `release` gives back), must count it
    until the answer: callers that send and cancel, again and again, cannot push more calls
    at the endorser than the bound."""
    released: list[int] = []

    async def test(serving: Serving, relay: Relay) -> None:
        slow = asyncio.ensure_future(relay.call(SERVICE + "RequestOptionsBatch", PEM, b"",
                                                release=lambda: released.append(1)))
        await _until(lambda: bool(relay._pending))
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert len(relay._pending) == 1 and released == []  # still counted
        Servicer.release.set()
        await _until(lambda: not relay._pending)
        assert released == [1]  # given back once, with the answer
    _run(test, tmp_path)


def test_a_call_out_of_time_before_it_leaves_the_front_is_not_sent(tmp_path: Path) -> None:
    released: list[int] = []

    async def test(serving: Serving, relay: Relay) -> None:
        answer = await relay.call(SERVICE + "GetBook", PEM, b"", timeout=0.0,
                                  release=lambda: released.append(1))
        assert answer.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert "before this front could relay it" in answer.details
        assert serving.seen == [] and released == [1] and not relay._pending
    _run(test, tmp_path)


def test_a_handler_cancelled_inside_still_answers_and_the_stream_goes_on(
        tmp_path: Path) -> None:
    async def test(_serving: Serving, relay: Relay) -> None:
        cancelled = await relay.call(SERVICE + "SubmitBatch", PEM, b"")
        assert cancelled.code == grpc.StatusCode.CANCELLED.value[0]
        assert (await relay.call(SERVICE + "GetBook", PEM, b"")).code == 0
    _run(test, tmp_path)


def test_only_methods_with_one_request_and_one_response_are_relayed() -> None:
    handlers = method_handlers([(endorser_pb2_grpc.add_EndorserServiceServicer_to_server,
                                 Servicer())])
    names = {m.name for m in endorser_pb2.DESCRIPTOR.services_by_name["EndorserService"].methods}
    assert set(handlers) == {SERVICE + n for n in names}
    assert CallRelayServicer(handlers, [])._handlers.keys() == handlers.keys()
    with pytest.raises(ValueError, match="named no method handlers"):
        method_handlers([(lambda _servicer, _server: None, Servicer())])
