"""RequestOptionsBatch gives every trade request exactly the outcome RequestOptions gives it:
for a mix of valid, crossing, held, refused-by-condition, badly signed and malformed
requests, the batch's results (code, message, the option's trades and rest) equal the single
calls' made in the same order against an identical endorser. A later request of a batch sees
the holds of the earlier ones' options. Then admission control inside a batch, and the
call's own limits."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext
from market_helpers import BUY, SELL, signed_request, terms
from prometheus_client import REGISTRY
from test_endorser_market import ASK, Endorser, make_endorser

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_ENVELOPES
from gridledger_endorser.admission import Admission, AdmissionConfig, Full

# code, message, (trade quantities, rest) of the option when OK, retry hint
Result = tuple[int, str, tuple[list[int], int] | None, int]


def _option(response: endorser_pb2.RequestOptionsResponse) -> tuple[list[int], int]:
    option = market_pb2.TradeOption.FromString(response.option.payload)
    return [t.quantity_wh for t in option.trades], option.rest_wh


def single(e: Endorser, request: envelope_pb2.SignedEnvelope) -> Result:
    context = FakeContext()
    try:
        response = e.servicer.RequestOptions(
            endorser_pb2.RequestOptionsRequest(request=request), context)  # type: ignore[arg-type]
    except Aborted as exc:
        hint = dict(getattr(context, "trailers", ())).get("retry-after-ms", "0")
        return exc.code.value[0], exc.details, None, int(hint)
    return 0, "", _option(response), 0


def batch(e: Endorser, requests: list[envelope_pb2.SignedEnvelope]) -> list[Result]:
    response = e.servicer.RequestOptionsBatch(
        endorser_pb2.RequestOptionsBatchRequest(requests=requests), FakeContext())  # type: ignore[arg-type]
    assert len(response.results) == len(requests)
    for r in response.results:
        assert r.HasField("options") == (r.code == 0)
    return [(r.code, r.message, _option(r.options) if r.code == 0 else None, r.retry_after_ms)
            for r in response.results]


def with_resting_sell(genesis: Genesis, consortium_dir: Path,
                      admission: Admission | None = None) -> Endorser:
    """An endorser whose book holds meter-1's committed sell of 2,000 Wh at ASK."""
    e = make_endorser(genesis, consortium_dir, admission)
    e.accept("meter-1", e.request("meter-1", terms("meter-1", SELL, ASK, 2000)))
    e.commit_broadcast()
    return e


def _counted() -> dict[tuple[str, ...], float]:
    """The trade-request counters by (side, result), and the matching histogram's count."""
    counted: dict[tuple[str, ...], float] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "gridledger_endorser_trade_requests_total":
                counted[(sample.labels["side"], sample.labels["result"])] = sample.value
            elif sample.name == "gridledger_endorser_matching_seconds_count":
                counted[("matching",)] = sample.value
    return counted


def _delta(before: dict[tuple[str, ...], float],
           after: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_batch_results_equal_single_call_results(genesis: Genesis,
                                                 consortium_dir: Path) -> None:
    one_by_one = with_resting_sell(genesis, consortium_dir)
    ids, now = one_by_one.ids, int(one_by_one.clock[0])
    bad_signature = signed_request(ids["meter-2"], terms("meter-2", BUY, ASK, 1000), now)
    bad_signature.signature = bytes(64)
    malformed = ids["meter-2"].sign_envelope(b"\xff not a trade request")
    mix = [
        signed_request(ids["meter-2"], terms("meter-2", BUY, ASK, 1500), now),  # crosses, holds
        signed_request(ids["meter-3"], terms("meter-3", BUY, ASK, 1000), now),  # across the hold
        signed_request(ids["meter-3"], terms("meter-3", BUY, ASK - 1000, 1000), now),  # rests
        bad_signature,
        malformed,
        signed_request(ids["plant-1"], terms("plant-1", SELL, ASK, 1000), now),  # not a meter
        signed_request(ids["meter-1"], terms("meter-1", SELL, 250_500, 1000), now),  # off tick
        signed_request(ids["meter-1"], terms("meter-1", SELL, ASK, 6700), now),  # > forecast
        signed_request(ids["meter-1"], terms("meter-1", SELL, ASK + 1000, 1000), now),  # rests
    ]
    batched = with_resting_sell(genesis, consortium_dir)
    before = _counted()
    expected = [single(one_by_one, r) for r in mix]
    between = _counted()
    got = batch(batched, mix)
    assert got == expected
    assert _delta(between, _counted()) == _delta(before, between)  # the same metrics
    codes = [grpc.StatusCode.OK, grpc.StatusCode.ABORTED, grpc.StatusCode.OK,
             grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OK]
    assert [code for code, _, _, _ in got] == [c.value[0] for c in codes]
    assert got[0][2] == ([1500], 0) and got[2][2] == ([], 1000)
    assert "held by options" in got[1][1]


def _full(e: Endorser, admission: Admission) -> Endorser:
    """`e` with its admission bound taken by submissions in flight."""
    n = 0
    while True:
        try:
            admission.check()
        except Full:
            return e
        admission.admit([f"in-flight-{n}"])
        n += 1


def test_admission_refuses_each_request_as_the_single_call_when_the_network_is_full(
        genesis: Genesis, consortium_dir: Path) -> None:
    def bound() -> Admission:
        return Admission(AdmissionConfig(budget_ms=1000, floor=2, ceiling=2))

    first, second = bound(), bound()
    one_by_one = _full(with_resting_sell(genesis, consortium_dir, first), first)
    ids, now = one_by_one.ids, int(one_by_one.clock[0])
    requests = [signed_request(ids["meter-2"], terms("meter-2", BUY, ASK, 1000), now),
                signed_request(ids["meter-3"], terms("meter-3", BUY, ASK, 1000), now)]
    expected = [single(one_by_one, r) for r in requests]
    got = batch(_full(with_resting_sell(genesis, consortium_dir, second), second), requests)
    assert got == expected
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert all(code == exhausted and hint > 0 and "admission bound" in message
               for code, message, _, hint in got)
    # Below the bound, the same requests are answered.
    assert [code for code, _, _, _ in batch(with_resting_sell(genesis, consortium_dir),
                                            requests)] == [0, 0]


def test_an_unexpected_failure_answers_only_its_own_request(
        genesis: Genesis, consortium_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    e = with_resting_sell(genesis, consortium_dir)
    ids, now = e.ids, int(e.clock[0])
    requests = [signed_request(ids["meter-2"], terms("meter-2", BUY, ASK, 1000), now),
                signed_request(ids["meter-3"], terms("meter-3", BUY, ASK - 1000, 1000), now),
                signed_request(ids["meter-3"], terms("meter-3", BUY, ASK, 1000), now)]
    desk = e.servicer._desk
    propose = desk.propose

    def fails_on_the_second(envelope: envelope_pb2.SignedEnvelope, member: str = "") -> object:
        if envelope == requests[1]:
            raise RuntimeError("storage went away")
        return propose(envelope, member)

    monkeypatch.setattr(desk, "propose", fails_on_the_second)
    with pytest.raises(RuntimeError):  # alone, it fails its own call (gRPC: UNKNOWN)
        single(e, requests[1])
    got = batch(e, requests)
    assert [code for code, _, _, _ in got] == [0, grpc.StatusCode.UNKNOWN.value[0], 0]
    assert "storage went away" in got[1][1]
    assert got[0][2] == ([1000], 0) and got[2][2] == ([1000], 0)


def test_the_calls_own_limit_refuses_the_whole_call(genesis: Genesis,
                                                   consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    request = signed_request(e.ids["meter-1"], terms("meter-1", SELL, ASK, 1000),
                             int(e.clock[0]))
    with pytest.raises(Aborted) as refused:
        e.servicer.RequestOptionsBatch(endorser_pb2.RequestOptionsBatchRequest(
            requests=[request] * (SUBMIT_BATCH_ENVELOPES + 1)), FakeContext())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {SUBMIT_BATCH_ENVELOPES} requests" in refused.value.details
    assert e.book() == ([], [])  # nothing was matched or held
    assert batch(e, []) == []
