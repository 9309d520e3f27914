"""The endorser on the asyncio server (AioNodeServer + AsyncEndorserServicer), over real mTLS
on loopback: every envelope of the batch test's mix gets, on the wire, exactly the status,
details and retry hint the threaded servicer gives it in process; a refused trade request,
and every request of a batch of them, likewise; and a caller that gives up while the
orderers have its transaction still has its admission slot freed when they refuse it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import uvloop
from broadcast_fakes import SealsThenBroadcasts
from gc_helpers import cyclic_garbage
from grpc_helpers import Aborted, FakeContext
from market_helpers import BUY, SELL, signed_request, terms
from prometheus_client import REGISTRY
from test_endorser_market import ASK
from test_options_batch import _option as option_of
from test_options_batch import batch as options_batch
from test_options_batch import with_resting_sell
from test_submit_batch import Orderers, Result, _claimed, batch, ids, servicer, signed, single

from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.rpc import event_loops
from gridledger_core.rpc.aio_server import AioNodeServer
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_ENVELOPES
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_endorser.admission import Admission, AdmissionConfig
from gridledger_endorser.aio_service import CHECK_SLICE, AsyncEndorserServicer
from gridledger_endorser.broadcaster import OrdererUnavailable
from gridledger_endorser.sealing import Seal
from gridledger_endorser.service import EndorserServicer

__all__ = ["ids"]  # a fixture, used here


def _served(s: EndorserServicer, consortium_dir: Path, genesis: Genesis,
            event_loop: str) -> AioNodeServer:
    server = AioNodeServer("endorser-1", "endorser", "127.0.0.1:0", "127.0.0.1:0",
                           TlsFiles.for_node(consortium_dir, "endorser-1"), genesis=genesis,
                           event_loop=event_loop)
    # The kind asked for is the loop the calls run on (else "both loops" tests one of them).
    assert isinstance(server._loop, uvloop.Loop) == (event_loop == "uvloop")
    server.add_service(endorser_pb2_grpc.add_EndorserServiceServicer_to_server,
                       AsyncEndorserServicer(s), "gridledger.endorser.v1.EndorserService")
    server.start()
    return server


class _Serve:
    """Starts asyncio endorser servers; a stub to the last one as any node."""

    def __init__(self, consortium_dir: Path, genesis: Genesis, event_loop: str) -> None:
        self._consortium_dir, self._genesis = consortium_dir, genesis
        self._event_loop = event_loop
        self.servers: list[AioNodeServer] = []

    def __call__(self, s: EndorserServicer) -> endorser_pb2_grpc.EndorserServiceStub:
        self.servers.append(_served(s, self._consortium_dir, self._genesis, self._event_loop))
        return self.connect("admin")

    def connect(self, caller: str) -> endorser_pb2_grpc.EndorserServiceStub:
        channel = grpc.secure_channel(f"localhost:{self.servers[-1].port}",
                                      TlsFiles.for_node(self._consortium_dir, caller)
                                      .channel_credentials())
        return endorser_pb2_grpc.EndorserServiceStub(channel)


# uvloop (the default) and Python's own loop (the endorser's --event-loop fallback): the
# same statuses, details and hints on both.
@pytest.fixture(params=event_loops.CHOICES)
def serve(consortium_dir: Path, genesis: Genesis, request: pytest.FixtureRequest
          ) -> Iterator[Any]:
    started = _Serve(consortium_dir, genesis, request.param)
    yield started
    for server in started.servers:
        server.stop()


def _wire_single(stub: endorser_pb2_grpc.EndorserServiceStub,
                 envelope: envelope_pb2.SignedEnvelope) -> Result:
    try:
        response = stub.SubmitTransaction(
            endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=10)
    except grpc.RpcError as exc:
        hint = dict(exc.trailing_metadata() or ()).get("retry-after-ms", "0")  # type: ignore[attr-defined]
        return (_claimed(envelope), exc.code().value[0], exc.details(), int(hint))  # type: ignore[attr-defined]
    assert response.HasField("endorsement")
    return response.tx_id, 0, "", 0


def _handled(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "unary", "grpc_service": "gridledger.endorser.v1.EndorserService",
        "grpc_method": method, "grpc_code": code}) or 0.0


def test_every_envelope_gets_the_threaded_servicers_outcome_on_the_wire(
        genesis: Genesis, consortium_dir: Path, ids: dict[str, SigningIdentity],
        serve: Any) -> None:
    m1, m2 = ids["meter-1"], ids["meter-2"]
    committed = signed(m1, 4)
    bad_signature = signed(m1, 2)
    bad_signature.signature = bytes(64)
    full, down = signed(m2, 1), signed(m2, 2)
    malformed = envelope_pb2.SignedEnvelope(payload=b"\xff\xff not a transaction",
                                            signer_certificate=m1.certificate)
    too_large = signed(m2, 3)
    too_large.signer_certificate += b" " * genesis.limits.max_tx_bytes
    mix = [signed(m1, 1), committed, bad_signature, signed(m2, 3, account="meter-1"),
           signed(m1, 4, produced=999), full, malformed, too_large, down, signed(m2, 4)]

    def orderers() -> Orderers:
        return Orderers(full={envelope_tx_id(full)}, down={envelope_tx_id(down)})

    in_process = servicer(genesis, consortium_dir, committed, orderers())
    expected = [single(in_process, e) for e in mix]
    assert len({code for _, code, _, _ in expected}) >= 6  # the mix covers most outcomes
    refused_before = _handled("SubmitTransaction", "UNAUTHENTICATED")

    stub = serve(servicer(genesis, consortium_dir, committed, orderers()))
    assert [_wire_single(stub, e) for e in mix] == expected
    assert _handled("SubmitTransaction", "UNAUTHENTICATED") == refused_before + 2

    stub = serve(servicer(genesis, consortium_dir, committed, orderers()))
    response = stub.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=mix), timeout=10)
    got = [(r.tx_id or _claimed(e), r.code, r.message, r.retry_after_ms)
           for r, e in zip(response.results, mix, strict=True)]
    assert got == batch(servicer(genesis, consortium_dir, committed, orderers()), mix)


def test_a_refused_trade_request_gets_the_same_status_and_details(
        genesis: Genesis, consortium_dir: Path, ids: dict[str, SigningIdentity],
        serve: Any) -> None:
    m1 = ids["meter-1"]
    request = endorser_pb2.RequestOptionsRequest(request=envelope_pb2.SignedEnvelope(
        payload=b"not a trade request", signer_certificate=m1.certificate,
        signature=m1.sign_envelope(b"not a trade request").signature))
    s = servicer(genesis, consortium_dir, signed(m1, 4), Orderers())
    with pytest.raises(Aborted) as in_process:
        s.RequestOptions(request, FakeContext())  # type: ignore[arg-type]
    stub = serve(servicer(genesis, consortium_dir, signed(m1, 4), Orderers()))
    with pytest.raises(grpc.RpcError) as on_wire:
        stub.RequestOptions(request, timeout=10)
    assert (on_wire.value.code(), on_wire.value.details()) == (  # type: ignore[attr-defined]
        in_process.value.code, in_process.value.details)


def test_a_batch_of_trade_requests_gets_the_threaded_servicers_outcomes_on_the_wire(
        genesis: Genesis, consortium_dir: Path, serve: Any) -> None:
    in_process = with_resting_sell(genesis, consortium_dir)
    ids, now = in_process.ids, int(in_process.clock[0])
    bad_signature = signed_request(ids["meter-2"], terms("meter-2", BUY, ASK, 1000), now)
    bad_signature.signature = bytes(64)
    # More than one slice, so the loop turns between slices.
    mix = [signed_request(ids["meter-2"], terms("meter-2", BUY, ASK, 2000), now),
           signed_request(ids["meter-3"], terms("meter-3", BUY, ASK, 1000), now),  # held
           signed_request(ids["meter-1"], terms("meter-1", SELL, 250_500, 1000), now),
           bad_signature] + [
        signed_request(ids["meter-1"], terms("meter-1", SELL, ASK + i * 1000, 1000), now)
        for i in range(CHECK_SLICE + 3)]
    expected = options_batch(in_process, mix)
    assert len({code for code, _, _, _ in expected}) == 4
    stub = serve(with_resting_sell(genesis, consortium_dir).servicer)
    response = stub.RequestOptionsBatch(
        endorser_pb2.RequestOptionsBatchRequest(requests=mix), timeout=10)
    got = [(r.code, r.message, option_of(r.options) if r.code == 0 else None, r.retry_after_ms)
           for r in response.results]
    assert got == expected
    with pytest.raises(grpc.RpcError) as refused:
        stub.RequestOptionsBatch(endorser_pb2.RequestOptionsBatchRequest(
            requests=mix[:1] * (SUBMIT_BATCH_ENVELOPES + 1)), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


class _Unanswered(SealsThenBroadcasts):
    """Orderers that answer only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, int]] = []

    def seal_and_broadcast_async(self, items: Sequence[tuple[envelope_pb2.SignedEnvelope, str]],
                                 seal: Seal, loop: asyncio.AbstractEventLoop
                                 ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append((future, loop, len(items)))
        return future

    def refuse_all(self) -> None:
        for future, loop, count in self.waiting:
            loop.call_soon_threadsafe(future.set_result, [
                (OrdererUnavailable("orderer-1: UNAVAILABLE: connection refused"), None)
            ] * count)


def test_a_caller_that_gives_up_still_frees_its_slot_when_the_orderers_refuse(
        genesis: Genesis, consortium_dir: Path, ids: dict[str, SigningIdentity],
        serve: Any) -> None:
    admission = Admission(AdmissionConfig(budget_ms=1000, floor=5, ceiling=5))
    orderers = _Unanswered()
    stub = serve(servicer(genesis, consortium_dir, signed(ids["plant-1"], 1),
                          orderers, admission))  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as gave_up:
        stub.SubmitTransaction(endorser_pb2.SubmitTransactionRequest(
            envelope=signed(ids["meter-1"], 1)), timeout=0.5)
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert admission.in_flight == 1 and len(orderers.waiting) == 1
    orderers.refuse_all()
    deadline = time.monotonic() + 5
    while admission.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert admission.in_flight == 0


def test_a_batch_whose_caller_gives_up_during_its_checks_frees_every_slot(
        genesis: Genesis, consortium_dir: Path, ids: dict[str, SigningIdentity]) -> None:
    """The call is cancelled between two slices of its checks (on the loop, as gRPC cancels
    a call whose deadline passed): the rest is still checked, forwarded and answered, so
    nothing it admitted stays counted in flight."""
    admission = Admission(AdmissionConfig(budget_ms=1000, floor=200, ceiling=200))
    orderers = _Unanswered()
    s = servicer(genesis, consortium_dir, signed(ids["plant-1"], 1), orderers,  # type: ignore[arg-type]
                 admission)
    envelopes = [signed(ids[meter], n) for meter in ("meter-1", "meter-2") for n in range(1, 51)]
    assert len(envelopes) > 3 * CHECK_SLICE
    request = endorser_pb2.SubmitBatchRequest(envelopes=envelopes)

    async def give_up_then_answer() -> None:
        call = asyncio.ensure_future(AsyncEndorserServicer(s).SubmitBatch(request, None))  # type: ignore[arg-type]
        for _ in range(3):  # until the call has admitted the batch and checked a slice
            if admission.in_flight:
                break
            await asyncio.sleep(0)
        assert admission.in_flight > 0 and not orderers.waiting
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(500):
            if orderers.waiting:
                break
            await asyncio.sleep(0.01)
        assert orderers.waiting, "the checks stopped with the caller"
        orderers.refuse_all()
        for _ in range(500):
            if not admission.in_flight:
                break
            await asyncio.sleep(0.01)

    asyncio.run(give_up_then_answer())
    assert admission.in_flight == 0


@pytest.mark.parametrize("event_loop", event_loops.CHOICES)
def test_the_asyncio_server_stops_gracefully_running_its_callbacks_in_order(
        genesis: Genesis, consortium_dir: Path, ids: dict[str, SigningIdentity],
        event_loop: str) -> None:
    """As the node's main thread does at SIGTERM: health goes NOT_SERVING, the server stops
    taking calls, on_stop then on_close run, and serve_until_signal returns."""
    server = _served(servicer(genesis, consortium_dir, signed(ids["plant-1"], 1), Orderers()),
                     consortium_dir, genesis, event_loop)
    ran: list[str] = []
    server.on_stop(lambda: ran.append("stop"))
    server.on_close(lambda: ran.append("close"))
    channel = grpc.secure_channel(f"localhost:{server.port}",
                                  TlsFiles.for_node(consortium_dir, "admin").channel_credentials())
    stub = endorser_pb2_grpc.EndorserServiceStub(channel)
    assert stub.GetBook(endorser_pb2.GetBookRequest(slot_start=0), timeout=10) is not None
    server.request_stop()
    started = time.monotonic()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_until_signal(grace_seconds=0.5)
    finally:  # it installs the node's own handlers: give pytest its own back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert ran == ["stop", "close"]
    assert time.monotonic() - started < 5
    with pytest.raises(grpc.RpcError) as gone:
        stub.GetBook(endorser_pb2.GetBookRequest(slot_start=0), timeout=2)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    channel.close()


def test_refusals_leave_no_reference_cycle_and_are_counted_by_code(
        genesis: Genesis, consortium_dir: Path, ids: dict[str, SigningIdentity],
        serve: Any) -> None:
    """A refusal ends the call with its status, details and retry hint on the wire, without
    `context.abort`: gRPC keeps abort's exception on the call, a cycle through the handler's
    frames per refused call that only a full collection freed, thousands per second when
    admission control refuses an overload."""
    m1 = ids["meter-1"]
    full = signed(m1, 1)
    stub = serve(servicer(genesis, consortium_dir, signed(m1, 4),
                          Orderers(full={envelope_tx_id(full)})))
    _wire_single(stub, signed(m1, 2))  # warm the channel and the server's handlers
    before = _handled("SubmitTransaction", "RESOURCE_EXHAUSTED")
    with cyclic_garbage() as garbage:
        for _ in range(5):
            assert _wire_single(stub, full)[1:] == (
                grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                "orderer-1: RESOURCE_EXHAUSTED: pool full; retry the same envelope after "
                "70 ms", 70)
        with pytest.raises(grpc.RpcError) as too_many:
            stub.SubmitBatch(endorser_pb2.SubmitBatchRequest(
                envelopes=[full] * (SUBMIT_BATCH_ENVELOPES + 1)), timeout=10)
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as not_a_request:
            stub.RequestOptions(endorser_pb2.RequestOptionsRequest(), timeout=10)
        assert not_a_request.value.code() != grpc.StatusCode.OK  # type: ignore[attr-defined]
        # The authorisation interceptor's refusal: a committer may not submit.
        with pytest.raises(grpc.RpcError) as not_allowed:
            serve.connect("committer-1").SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=full), timeout=10)
        assert not_allowed.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        del too_many, not_a_request, not_allowed
    assert _handled("SubmitTransaction", "RESOURCE_EXHAUSTED") == before + 5
    assert garbage["AbortError"] == 0, garbage.most_common(8)
