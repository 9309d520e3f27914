"""Sizes and fairness at the endorser's edge: a meter's outstanding options may hold at most
its allowance, and trade requests are fresh and answered once (the real servicer over a
Ledger on a MemoryStore, as in test_endorser_market)."""

from __future__ import annotations

import os

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext
from hypothesis import given, settings
from hypothesis import strategies as st
from market_helpers import BUY, NOW, SELL, terms
from prometheus_client import REGISTRY
from test_endorser_market import ASK, Endorser, _option, endorser  # noqa: F401 - fixture

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.rules.market import Allowance
from gridledger_core.rpc.errors import EdgeRefusal
from gridledger_endorser.book_cache import HOLD_GRACE_SECONDS
from gridledger_endorser.options import (
    DEAD_ANSWER_SCAN,
    KEPT_OVERHEAD,
    DeskLimits,
    Proposal,
    RequestFreshness,
)
from gridledger_endorser.service import EndorserServicer


def _signed(e: Endorser, signer: str, order: market_pb2.OrderTerms, at: int,
            nonce: bytes | None = None) -> envelope_pb2.SignedEnvelope:
    request = market_pb2.TradeRequest(terms=order, nonce=os.urandom(16) if nonce is None
                                      else nonce, requested_at=at)
    return e.ids[signer].sign_envelope(request.SerializeToString())


def _ask(e: Endorser, envelope: envelope_pb2.SignedEnvelope
         ) -> endorser_pb2.RequestOptionsResponse:
    return e.servicer.RequestOptions(endorser_pb2.RequestOptionsRequest(request=envelope),
                                     FakeContext())  # type: ignore[arg-type]


def _refused(e: Endorser, envelope: envelope_pb2.SignedEnvelope) -> Aborted:
    with pytest.raises(Aborted) as err:
        _ask(e, envelope)
    return err.value


def _liquidity(e: Endorser, wh: int) -> None:
    """meter-1 (surplus 6,000 Wh) rests an ask of `wh` on the ledger."""
    e.accept("meter-1", e.request("meter-1", terms("meter-1", SELL, ASK, wh)))
    e.commit_broadcast()


def test_repeated_requests_cannot_hold_more_than_the_meters_allowance(e: Endorser) -> None:
    _liquidity(e, 6000)
    # meter-3's deficit is 2,000 Wh (allowance 2,200 with the 10 % tolerance).
    first = e.request("meter-3", terms("meter-3", BUY, ASK, 2000))
    assert sum(t.quantity_wh for t in _option(first).trades) == 2000
    err = _refused(e, _signed(e, "meter-3", terms("meter-3", BUY, ASK, 2000), NOW))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "hold 2000 Wh" in err.details and "cap of 2200 Wh" in err.details
    assert "request at most 200 Wh" in err.details
    # It says when to come back: once its first option stops holding (expiry and grace).
    refused = e.servicer.options(_signed(e, "meter-3", terms("meter-3", BUY, ASK, 2000), NOW),
                                 "")
    assert refused.retry_after_ms == (30 + HOLD_GRACE_SECONDS + 1) * 1000
    assert e.book() == ([], [(ASK, 4000, 1)])  # the rest stays for others
    # What is left under the cap may still be asked for.
    assert sum(t.quantity_wh for t in _option(
        e.request("meter-3", terms("meter-3", BUY, ASK, 200))).trades) == 200


def test_the_cap_frees_when_the_options_expire_or_reach_the_ledger(e: Endorser) -> None:
    _liquidity(e, 6000)
    held = e.request("meter-3", terms("meter-3", BUY, ASK, 2000))
    e.clock[0] = _option(held).expires_at + HOLD_GRACE_SECONDS + 1  # past expiry and the grace
    again = e.request("meter-3", terms("meter-3", BUY, ASK, 2000))
    assert sum(t.quantity_wh for t in _option(again).trades) == 2000
    e.accept("meter-3", again)
    e.commit_broadcast()
    # On the ledger it counts as committed (allowance left 200), no longer as held.
    assert sum(t.quantity_wh for t in _option(
        e.request("meter-3", terms("meter-3", BUY, ASK, 200))).trades) == 200


def test_the_cap_is_configurable(e: Endorser) -> None:
    _liquidity(e, 6000)
    # As `--max-held-percent 200` sets it: a servicer over the same replica.
    e.servicer = EndorserServicer(e.ledger, e.ids["endorser-1"], e.broadcaster,  # type: ignore[arg-type]
                                  clock=lambda: e.clock[0],
                                  limits=DeskLimits(max_held_percent=200))
    for _ in range(2):
        e.request("meter-3", terms("meter-3", BUY, ASK, 2000))
    err = _refused(e, _signed(e, "meter-3", terms("meter-3", BUY, ASK, 2000), NOW))
    assert "cap of 4400 Wh (200%" in err.details


@pytest.mark.parametrize("offset", [-31, 31])
def test_stale_or_future_requests_are_refused(e: Endorser, offset: int) -> None:
    err = _refused(e, _signed(e, "meter-1", terms("meter-1", SELL, ASK, 1000), NOW + offset))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "at most 30 s" in err.details
    assert e.book() == ([], [])


def test_a_request_is_answered_once(e: Endorser) -> None:
    """Sent again, the very same signed request gets the same option (its answer may have
    been lost) when that option holds energy; one that holds nothing is not kept (losing it
    costs nothing: a new request). The same nonce with other terms is refused."""
    _liquidity(e, 6000)
    envelope = _signed(e, "meter-2", terms("meter-2", BUY, ASK, 1000), NOW - 30)
    first = _ask(e, envelope)
    assert _ask(e, envelope).option == first.option
    other = _signed(e, "meter-2", terms("meter-2", BUY, ASK, 2000), NOW - 30,
                    market_pb2.TradeRequest.FromString(envelope.payload).nonce)
    err = _refused(e, other)
    assert err.code == grpc.StatusCode.ALREADY_EXISTS and "already answered" in err.details
    rests = _signed(e, "meter-1", terms("meter-1", SELL, ASK, 500), NOW)
    _ask(e, rests)
    err = _refused(e, rests)
    assert err.code == grpc.StatusCode.ALREADY_EXISTS and "already answered" in err.details
    # Another meter may use the same nonce: nonces are per signer.
    nonce = market_pb2.TradeRequest.FromString(envelope.payload).nonce
    _ask(e, _signed(e, "meter-3", terms("meter-3", BUY, ASK - 5000, 1000), NOW, nonce))


def test_a_kept_option_goes_only_to_the_member_that_asked(e: Endorser) -> None:
    """Whoever else holds the signed request (a relaying head-end of another member) gets no
    copy of the option: its trades, makers and expiry are the asking member's."""
    _liquidity(e, 6000)
    envelope = _signed(e, "meter-2", terms("meter-2", BUY, ASK, 1000), NOW)
    first = e.servicer.options(envelope, "community")
    assert first.code == grpc.StatusCode.OK
    assert e.servicer.options(envelope, "solarco").code == grpc.StatusCode.ALREADY_EXISTS
    again = e.servicer.options(envelope, "community")
    assert again.response is not None and first.response is not None
    assert again.response.option == first.response.option


def test_a_copy_sent_while_the_first_is_being_answered_is_told_to_come_back(
        e: Endorser) -> None:
    """Two copies of one request in flight (the first one's answer is slow: the client
    timed out and sent it again). Before, the second got ALREADY_EXISTS and the meter signed
    a new request: a second hold, the first left to lapse."""
    _liquidity(e, 6000)
    envelope = _signed(e, "meter-2", terms("meter-2", BUY, ASK, 1000), NOW)
    fresh = e.servicer._desk._fresh
    request = market_pb2.TradeRequest.FromString(envelope.payload)
    fresh.admit("meter-2", request, NOW)  # the first copy, being answered
    counted = REGISTRY.get_sample_value("gridledger_endorser_trade_requests_total",
                                        {"side": "buy", "result": "being_answered"}) or 0
    second = e.servicer.options(envelope, "")
    assert second.code == grpc.StatusCode.ABORTED and second.retry_after_ms > 0
    assert "still being answered" in second.message
    assert REGISTRY.get_sample_value("gridledger_endorser_trade_requests_total",
                                     {"side": "buy", "result": "being_answered"}) == counted + 1
    fresh.answered_with("meter-2", request, b"", "community", None)  # it was refused


def test_a_request_without_a_nonce_is_refused(e: Endorser) -> None:
    err = _refused(e, _signed(e, "meter-1", terms("meter-1", SELL, ASK, 1000), NOW, b""))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "nonce" in err.details


def _request(nonce: bytes, at: int) -> market_pb2.TradeRequest:
    return market_pb2.TradeRequest(nonce=nonce, requested_at=at)


def test_nonces_are_remembered_only_while_their_request_is_fresh() -> None:
    fresh = RequestFreshness(DeskLimits(request_window=30, max_requests_per_window=3))
    for i in range(3):
        fresh.admit("meter-1", _request(bytes([i + 1]), 1000), 1000)
    with pytest.raises(EdgeRefusal) as err:
        fresh.admit("meter-1", _request(b"\x09", 1000), 1000)
    assert err.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    fresh.admit("meter-2", _request(b"\x09", 1000), 1000)  # a per-meter bound
    assert fresh.remembered == 4
    # Once those requests are stale their nonces are forgotten (a replay is stale anyway).
    fresh.admit("meter-1", _request(b"\x0a", 1031), 1031)
    assert fresh.remembered == 1
    with pytest.raises(EdgeRefusal) as stale:
        fresh.admit("meter-1", _request(b"\x01", 1000), 1031)
    assert stale.value.status == grpc.StatusCode.FAILED_PRECONDITION


def test_a_nonce_refused_then_answered_stays_remembered_for_its_answered_request() -> None:
    fresh = RequestFreshness(DeskLimits(request_window=30, max_requests_per_window=5))
    fresh.admit("meter-1", _request(b"\x01", 1000), 1000)
    fresh.forget("meter-1", _request(b"\x01", 1000))  # refused for now
    fresh.answered_with("meter-1", _request(b"\x01", 1000), b"", "org", None)
    fresh.admit("meter-1", _request(b"\x01", 1020), 1020)  # same nonce, answered
    fresh.answered_with("meter-1", _request(b"\x01", 1020), b"", "org", None)
    # The first request's expiry (1030) passes; the answered one is fresh until 1050.
    with pytest.raises(EdgeRefusal) as replay:
        fresh.admit("meter-1", _request(b"\x01", 1020), 1035)
    assert replay.value.status == grpc.StatusCode.ALREADY_EXISTS
    # A refused request still counts as made within the window (the answered one and four
    # refused ones make five).
    for nonce in (b"\x02", b"\x03", b"\x04", b"\x05"):
        fresh.admit("meter-1", _request(nonce, 1035), 1035)
        fresh.forget("meter-1", _request(nonce, 1035))
        fresh.answered_with("meter-1", _request(nonce, 1035), b"", "org", None)
    with pytest.raises(EdgeRefusal) as many:
        fresh.admit("meter-1", _request(b"\x06", 1035), 1035)
    assert many.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture()
def e(endorser: Endorser) -> Endorser:  # noqa: F811 - the imported fixture, shorter name
    return endorser


KEPT = Proposal(envelope_pb2.SignedEnvelope(), market_pb2.TradeOption(
    trades=[market_pb2.ProposedTrade(quantity_wh=1)]), Allowance(0, 0, 0))
KEPT_SIZE = len(b"digest") + len("org") + KEPT_OVERHEAD


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["meter-1", "meter-2"]), st.binary(min_size=1,
                                                                             max_size=2),
                          st.integers(-40, 40), st.integers(0, 20), st.booleans()),
                max_size=60))
def test_an_exact_request_is_admitted_once_and_memory_stays_bounded(
        calls: list[tuple[str, bytes, int, int, bool]]) -> None:
    """Refused for now (held energy, shares: `forget`), the same request may come again;
    answered, it is never admitted again (its kept answer, if any, goes only to the same
    member and payload), and what is kept stays within its byte bound."""
    fresh = RequestFreshness(DeskLimits(request_window=30, max_requests_per_window=5,
                                        max_kept_answer_bytes=3 * KEPT_SIZE))
    now, answered = 1_000, set()
    for meter, nonce, offset, step, refused_for_now in calls:
        now += step
        request = _request(nonce, now + offset)
        try:
            fresh.admit(meter, request, now)
        except EdgeRefusal:
            continue
        key = (meter, nonce, request.requested_at)
        assert key not in answered
        assert abs(offset) <= 30
        if refused_for_now:
            fresh.forget(meter, request)
            fresh.answered_with(meter, request, b"digest", "org", None)
        else:  # answered: kept while fresh, within its byte bound, for the same member only
            answered.add(key)
            room = fresh.kept_bytes + KEPT_SIZE <= 3 * KEPT_SIZE
            fresh.answered_with(meter, request, b"digest", "org", KEPT)
            assert (fresh.answered(meter, request, b"digest", "org", now) is not None) == room
            assert fresh.answered(meter, request, b"other", "org", now) is None
            assert fresh.answered(meter, request, b"digest", "another org", now) is None
        assert fresh.remembered <= sum(fresh._count.values()) <= 2 * 5
        assert not fresh._pending
        assert len(fresh._kept) <= fresh.remembered
        assert fresh.kept_bytes == sum(k.size for k in fresh._kept.values()) <= 3 * KEPT_SIZE


def test_an_answer_lost_on_the_way_costs_no_second_hold(e: Endorser) -> None:
    """The meter never saw its option (DEADLINE_EXCEEDED) and sends the same request again.
    Before, that was refused (ALREADY_EXISTS) and the meter's new request held the energy a
    second time, the first option left to lapse (charged to its member); now the same
    option comes back, and the energy is held once."""
    _liquidity(e, 6000)
    envelope = _signed(e, "meter-2", terms("meter-2", BUY, ASK, 3000), NOW)
    first = _ask(e, envelope)
    e.clock[0] = NOW + 5
    again = _ask(e, envelope)
    assert again.option == first.option
    assert e.book() == ([], [(ASK, 3000, 1)])  # held once: 3,000 of 6,000 Wh left
    e.accept("meter-2", again)
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]


def test_a_kept_answer_that_can_no_longer_trade_is_not_given_again(e: Endorser) -> None:
    _liquidity(e, 6000)
    envelope = _signed(e, "meter-2", terms("meter-2", BUY, ASK, 3000), NOW)
    option = _option(_ask(e, envelope))
    e.clock[0] = option.expires_at - 2  # too little time left to reach a block
    err = _refused(e, envelope)
    assert err.code == grpc.StatusCode.ALREADY_EXISTS and "sign a new request" in err.details
    # Placed (or made void): its energy is no longer held for it.
    e.clock[0] = NOW
    placed = _signed(e, "meter-3", terms("meter-3", BUY, ASK, 1000), NOW)
    e.accept("meter-3", _ask(e, placed))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert _refused(e, placed).code == grpc.StatusCode.ALREADY_EXISTS


def test_answers_are_kept_within_their_byte_bound(e: Endorser) -> None:
    _liquidity(e, 6000)
    e.servicer = EndorserServicer(e.ledger, e.ids["endorser-1"], e.broadcaster,  # type: ignore[arg-type]
                                  clock=lambda: e.clock[0],
                                  limits=DeskLimits(max_kept_answer_bytes=1))
    envelope = _signed(e, "meter-2", terms("meter-2", BUY, ASK, 1000), NOW)
    _ask(e, envelope)
    assert _refused(e, envelope).code == grpc.StatusCode.ALREADY_EXISTS  # not kept: as before


def test_a_copy_is_not_admitted_between_a_refusal_for_now_and_its_answer() -> None:
    """Refused for now, the request is forgotten before its call has answered. A copy
    admitted in that gap had its "being answered" mark removed by the first call's end, so
    a third copy got ALREADY_EXISTS (and its meter signed a new request: a second hold)."""
    fresh = RequestFreshness(DeskLimits(request_window=30))
    request = _request(b"\x01", 1000)
    fresh.admit("meter-1", request, 1000)
    fresh.forget("meter-1", request)  # refused for now; its call has not answered yet
    with pytest.raises(EdgeRefusal) as err:
        fresh.admit("meter-1", request, 1000)
    assert err.value.status == grpc.StatusCode.ABORTED
    fresh.answered_with("meter-1", request, b"", "org", None)  # the first call answers
    fresh.admit("meter-1", request, 1000)  # now the copy is admitted
    with pytest.raises(EdgeRefusal) as again:
        fresh.admit("meter-1", request, 1000)
    assert again.value.status == grpc.StatusCode.ABORTED  # still being answered


def _kept_proposal(option_id: str) -> Proposal:
    return Proposal(envelope_pb2.SignedEnvelope(), market_pb2.TradeOption(
        option_id=option_id, trades=[market_pb2.ProposedTrade(quantity_wh=1)]),
        Allowance(0, 0, 0))


def test_a_member_whose_answers_all_hold_does_not_scan_them_all_per_request() -> None:
    """Out of bytes, a member's next answer looks at its oldest DEAD_ANSWER_SCAN answers for
    one that no longer holds, not at every answer kept (each look takes the book cache's
    lock, on the endorser's one loop)."""
    looked = []
    one = len(b"d") + len("org") + len("o0000") + KEPT_OVERHEAD
    count = 3 * DEAD_ANSWER_SCAN
    fresh = RequestFreshness(DeskLimits(max_kept_answer_bytes=count * one,
                                        max_requests_per_window=count + 1),
                             holds=lambda option_id: looked.append(option_id) or True)
    for i in range(count + 1):
        request = _request(i.to_bytes(2, "big"), 1000)
        fresh.admit("meter-1", request, 1000)
        fresh.answered_with("meter-1", request, b"d", "org", _kept_proposal(f"o{i:04d}"))
    assert looked == [f"o{i:04d}" for i in range(DEAD_ANSWER_SCAN)]  # the oldest only
    assert fresh.kept_bytes == count * one  # all still hold: the last one was not kept


def test_answers_whose_option_no_longer_holds_make_room_for_new_ones() -> None:
    """A busy member's share filled with answers whose options were placed (or voided) in
    the meantime: they could only be refused if asked for again, so a new answer replaces
    them instead of going unkept."""
    holding = {"a", "b"}

    one = len(b"d") + len("org") + len("a") + KEPT_OVERHEAD  # one kept answer's bytes
    fresh = RequestFreshness(DeskLimits(max_kept_answer_bytes=one),
                             holds=lambda option_id: option_id in holding)
    requests = [_request(bytes([i]), 1000) for i in (1, 2, 3)]
    for request, option_id in zip(requests, "abc", strict=True):
        fresh.admit("meter-1", request, 1000)
        fresh.answered_with("meter-1", request, b"d", "org", _kept_proposal(option_id))
        if option_id == "b":  # no room while "a" holds
            assert fresh.answered("meter-1", request, b"d", "org", 1000) is None
            holding.discard("a")  # "a" is placed
    assert fresh.answered("meter-1", requests[0], b"d", "org", 1000) is None  # dropped
    assert fresh.answered("meter-1", requests[2], b"d", "org", 1000) is not None
    assert fresh.kept_bytes == one
