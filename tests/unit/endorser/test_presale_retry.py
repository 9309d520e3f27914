"""The meter-agent's pre-sale trader when the endorser refuses for now (issue 15: clients back
off with jitter). A real endorser servicer and committer in process, reached through a stub
that fails as a gRPC channel does (status, details, trailing metadata).

Before, a slot refused for now (admission bound, an answer lost on the way) was given up for
good: the meter did not trade that slot at all."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext, StatusError
from market_helpers import NOW, SELL, SLOT, cancel, terms
from prometheus_client import REGISTRY
from test_endorser_market import Endorser, accept_proof, make_endorser

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger_committer.service import CommitterServicer
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.market.option_check import request_digest
from gridledger_core.rpc.backoff import Backoff
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.signing_identity import envelope_tx_id
from gridledger_core.storage import MemoryStore, WriteBatch
from gridledger_endorser.admission import Admission, AdmissionConfig
from gridledger_endorser.options import DeskLimits
from gridledger_endorser.service import EndorserServicer
from gridledger_meter_agent.ledger_client import LedgerClient
from gridledger_meter_agent.placements import PlacementJournal
from gridledger_meter_agent.presale import (
    CHAIN_POLL_S,
    REQUEST_REUSE_S,
    UNHEALTHY_AFTER,
    Outcome,
    PresalePolicy,
    PresaleTrader,
)


class _Wire:
    """Calls a servicer as a stub would; `lose[name]` answers lost after the call was
    handled, `drop[name]` calls that never arrive (both: how many more, and the status)."""

    def __init__(self, servicer: Any) -> None:
        self._servicer = servicer
        self.calls: dict[str, int] = {}
        self.lose: dict[str, tuple[int, grpc.StatusCode]] = {}
        self.drop: dict[str, tuple[int, grpc.StatusCode]] = {}
        self.before: dict[str, Callable[[], None]] = {}  # run once before the next call
        self.answered: dict[str, list[Any]] = {}  # every answer given, lost or not

    def _take(self, table: dict[str, tuple[int, grpc.StatusCode]],
              name: str) -> grpc.StatusCode | None:
        left, code = table.get(name, (0, grpc.StatusCode.OK))
        if not left:
            return None
        table[name] = (left - 1, code)
        return code

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._servicer, name)

        def call(request: Any, timeout: float | None = None) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            hook = self.before.pop(name, None)
            if hook is not None:
                hook()
            dropped = self._take(self.drop, name)
            if dropped is not None:
                raise StatusError(dropped, "connection refused")
            context = FakeContext()
            try:
                answer = method(request, context)
            except Aborted as exc:
                raise StatusError(exc.code, exc.details,
                                 getattr(context, "trailers", ())) from None
            self.answered.setdefault(name, []).append(answer)
            lost = self._take(self.lose, name)
            if lost is not None:
                raise StatusError(lost, "the answer was lost")
            return answer
        return call


def _trader(e: Endorser, endorser_wire: _Wire, sell_price: int = 240_000,
            meter: str = "meter-1", journal: PlacementJournal | None = None) -> PresaleTrader:
    committer = CommitterServicer(e.ledger, HeightNotifier(lambda: e.ledger.height))
    client = LedgerClient(endorser_wire, _Wire(committer),  # type: ignore[arg-type]
                          sleep=lambda _s: None)
    policy = PresalePolicy(share_percent=50, sell_price=sell_price, buy_price=260_000)
    # No jitter: the test knows when the retry is due.
    return PresaleTrader(e.ids[meter], e.ledger.genesis, client, policy,
                         backoff=Backoff(base_s=1.0, cap_s=60.0, draw=lambda: 0.0),
                         journal=journal)


def _answers_lost(e: Endorser, times: int = 5, journal: PlacementJournal | None = None
                  ) -> tuple[_Wire, PresaleTrader]:
    """A trader whose first PlaceOrder is handled by the endorser every time it is sent,
    and whose answers are lost `times` times (every attempt of its first step: LATER)."""
    wire = _Wire(e.servicer)
    wire.lose["SubmitTransaction"] = (times, grpc.StatusCode.DEADLINE_EXCEEDED)
    trader = _trader(e, wire, journal=journal)
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    return wire, trader


def _orders(e: Endorser) -> list[tuple[int, int]]:
    committer = CommitterServicer(e.ledger, HeightNotifier(lambda: e.ledger.height))
    found = committer.ListOrders(committer_pb2.ListOrdersRequest(meter="meter-1"),
                                 FakeContext()).orders  # type: ignore[arg-type]
    return [(o.side, o.quantity_wh) for o in found]


@pytest.fixture()
def full_admission() -> Admission:
    """One transaction may be in flight, with a 4 s latency budget: the hint is 2 s."""
    return Admission(AdmissionConfig(budget_ms=4_000, floor=1, ceiling=1))


def test_refused_at_the_admission_bound_asks_again_after_the_hint(
        genesis: Genesis, consortium_dir: Path, full_admission: Admission) -> None:
    e = make_endorser(genesis, consortium_dir, admission=full_admission)
    # Two other members fill the bound (and the room lent to a member below its share).
    full_admission.admit(["other-1"], member="org-a")
    full_admission.admit(["other-2"], member="org-b")
    wire = _Wire(e.servicer)
    trader = _trader(e, wire)
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    assert wire.calls == {"RequestOptions": 1}
    assert trader.next_retry() == NOW + 2.0  # the endorser's hint, not the 1 s base
    assert trader.step(NOW + 1.9, slot=SLOT) is None  # not before the hint
    assert wire.calls == {"RequestOptions": 1}
    full_admission.release("other-1")
    full_admission.release("other-2")
    assert trader.step(NOW + 2, slot=SLOT) is Outcome.PLACED
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]
    assert trader.step(NOW + 100, slot=SLOT) is None  # one order per slot


def test_refusals_for_now_back_off_longer_while_they_repeat(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    wire.drop["RequestOptions"] = (3, grpc.StatusCode.UNAVAILABLE)  # no hint: exponential
    trader = _trader(e, wire)
    now = float(NOW)
    waits = []
    for _ in range(3):
        assert trader.step(now, slot=SLOT) is Outcome.LATER
        due = trader.next_retry()
        assert due is not None
        waits.append(due - now)
        now = due
    assert waits == [1.0, 2.0, 4.0]
    assert trader.step(now, slot=SLOT) is Outcome.PLACED


def _placed_option_ids(e: Endorser, meter: str = "meter-1") -> list[str]:
    committer = CommitterServicer(e.ledger, HeightNotifier(lambda: e.ledger.height))
    found = committer.ListOrders(committer_pb2.ListOrdersRequest(meter=meter),
                                 FakeContext()).orders  # type: ignore[arg-type]
    return [o.option_id for o in found]


def test_a_lost_option_is_asked_for_with_the_same_request_and_placed(
        genesis: Genesis, consortium_dir: Path) -> None:
    """The endorser answered but the answer was lost. Before, the agent signed a new request:
    a second option held the energy again and the first lapsed, charged to its member. Now
    it sends the same request, the endorser gives the same option, and that one is placed."""
    e = make_endorser(genesis, consortium_dir)
    e.accept("meter-1", e.request("meter-1", terms("meter-1", SELL, 250_000, 6000)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    wire = _Wire(e.servicer)
    wire.lose["RequestOptions"] = (1, grpc.StatusCode.DEADLINE_EXCEEDED)
    trader = _trader(e, wire, meter="meter-2")  # a buyer: its option takes meter-1's ask
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    e.clock[0] = NOW + 1
    assert trader.step(NOW + 1, slot=SLOT) is Outcome.PLACED
    first, second = wire.answered["RequestOptions"]
    assert second.option == first.option
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    lost = market_pb2.TradeOption.FromString(first.option.payload)
    assert lost.trades
    assert _placed_option_ids(e, "meter-2") == [lost.option_id]


def test_a_request_the_endorser_cannot_answer_again_is_made_anew_at_once(
        genesis: Genesis, consortium_dir: Path) -> None:
    """Too old to send again, or the endorser kept no answer (ALREADY_EXISTS): a new
    request with a new nonce, not the end of the slot."""
    e = make_endorser(genesis, consortium_dir)
    e.servicer = EndorserServicer(e.ledger, e.ids["endorser-1"], e.broadcaster,  # type: ignore[arg-type]
                                  clock=lambda: e.clock[0],
                                  limits=DeskLimits(max_kept_answer_bytes=1))
    wire = _Wire(e.servicer)
    wire.lose["RequestOptions"] = (1, grpc.StatusCode.DEADLINE_EXCEEDED)
    trader = _trader(e, wire)
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    assert trader.step(NOW + 1, slot=SLOT) is Outcome.PLACED
    assert wire.calls["RequestOptions"] == 3  # lost; refused ALREADY_EXISTS; answered
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    # Past the reuse time the agent does not even try the old one.
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    wire.lose["RequestOptions"] = (1, grpc.StatusCode.DEADLINE_EXCEEDED)
    trader = _trader(e, wire)
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    later = NOW + REQUEST_REUSE_S + 1
    e.clock[0] = later
    assert trader.step(later, slot=SLOT) is Outcome.PLACED
    assert wire.calls["RequestOptions"] == 2
    first, second = wire.answered["RequestOptions"]
    assert second.option.payload != first.option.payload


def test_a_lost_acknowledgement_resends_the_same_order_never_a_second(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    wire, trader = _answers_lost(e)
    assert trader.step(NOW + 1, slot=SLOT) is Outcome.PLACED  # the same envelope, answered
    assert wire.calls == {"RequestOptions": 1, "SubmitTransaction": 6}
    sent = [envelope_pb2.EndorsedTransaction.FromString(raw) for raw in e.broadcaster.sent]
    assert len({envelope_tx_id(t.envelope) for t in sent}) == 1
    codes = e.commit_broadcast()  # each attempt was forwarded; orderers dedupe, this fake not
    assert codes.count(Code.TX_VALIDATION_CODE_VALID) == 1
    assert set(codes) == {Code.TX_VALIDATION_CODE_VALID, Code.TX_VALIDATION_CODE_DUPLICATE_TXID}
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]


def _block_at(e: Endorser, timestamp: int) -> None:
    """A block (empty) at `timestamp`: the chain's time moves on."""
    e.servicer.books.on_commit(e.ledger.commit(e.chain.block([], timestamp=timestamp)))


EXPIRES_AT = NOW + 30  # of an option the endorser issues at NOW


def test_an_order_that_got_in_unacknowledged_is_not_placed_again(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    wire, trader = _answers_lost(e, times=10)
    # It got in meanwhile (the later attempts of the same tx id are duplicates).
    assert set(e.commit_broadcast()) == {Code.TX_VALIDATION_CODE_VALID,
                                         Code.TX_VALIDATION_CODE_DUPLICATE_TXID}
    # Until a block's time is past its option's expiry, whatever the agent's clock says,
    # nothing new is asked for.
    assert trader.step(EXPIRES_AT + 100, slot=SLOT) is Outcome.LATER
    assert wire.calls["RequestOptions"] == 1
    _block_at(e, EXPIRES_AT + 1)
    assert trader.step(EXPIRES_AT + 200, slot=SLOT) is Outcome.PLACED
    assert wire.calls["RequestOptions"] == 1
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]


def test_a_lagging_committer_cannot_make_it_order_twice(
        genesis: Genesis, consortium_dir: Path) -> None:
    """The agent's committer has not yet applied the block with the first order (it lags),
    so it answers NOT_FOUND. Before, the agent took that as "never placed" once its clock
    was past the expiry and ordered again: two orders for one slot."""
    e = make_endorser(genesis, consortium_dir)
    wire, trader = _answers_lost(e)
    behind = Ledger(MemoryStore(), genesis, accept_proof)  # a committer at height 0
    trader._ledger.committer = _Wire(CommitterServicer(behind, HeightNotifier(lambda: 0)))
    e.clock[0] = EXPIRES_AT + 100
    assert trader.step(EXPIRES_AT + 100, slot=SLOT) is Outcome.LATER
    assert wire.calls["RequestOptions"] == 1
    e.commit_broadcast()
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]


def test_an_order_that_never_arrived_is_asked_for_anew_after_its_option_expired(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    wire.drop["SubmitTransaction"] = (5, grpc.StatusCode.UNAVAILABLE)
    trader = _trader(e, wire)
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    later = EXPIRES_AT + 2
    e.clock[0] = later  # the endorser's clock moved on as well
    _block_at(e, EXPIRES_AT + 1)
    assert trader.step(later, slot=SLOT) is Outcome.PLACED
    assert wire.calls["RequestOptions"] == 2  # a new request: the old option is dead
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]


def test_an_option_made_void_by_a_cancel_is_not_the_end_of_the_slot(
        genesis: Genesis, consortium_dir: Path) -> None:
    """A buyer's option trades with a resting sell that its seller cancels before the buyer
    submits: the endorser refuses the PlaceOrder (FAILED_PRECONDITION, "request new
    options"). Before, the agent gave up the slot for good; now it waits until the chain shows
    the option can no longer be placed and asks again."""
    e = make_endorser(genesis, consortium_dir)
    e.accept("meter-1", e.request("meter-1", terms("meter-1", SELL, 240_000, 3000)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    [(_, resting, _, _)] = e.servicer.books.open_orders()
    wire = _Wire(e.servicer)

    def seller_cancels() -> None:
        e.submit(cancel(e.ids["meter-1"], resting))
        assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    wire.before["SubmitTransaction"] = seller_cancels
    buyer = _trader(e, wire, meter="meter-2")
    assert buyer.step(NOW, slot=SLOT) is Outcome.LATER
    assert wire.calls == {"RequestOptions": 1, "SubmitTransaction": 1}
    assert buyer.step(NOW + 5, slot=SLOT) is Outcome.LATER  # not resent: it is dead
    assert wire.calls["SubmitTransaction"] == 1
    _block_at(e, EXPIRES_AT + 1)
    e.clock[0] = EXPIRES_AT + 2
    assert buyer.step(EXPIRES_AT + 2, slot=SLOT) is Outcome.PLACED  # a new buy, resting
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]


def test_waiting_for_the_chain_looks_again_soon_and_once_more_at_gate_closure(
        genesis: Genesis, consortium_dir: Path) -> None:
    """While it waits for a block past its option's expiry the agent looks every few seconds
    (before: an exponential backoff that grew to minutes, losing slots near gate closure);
    and an order that got in is found at gate closure (before: reported gate_closed)."""
    e = make_endorser(genesis, consortium_dir)
    wire, trader = _answers_lost(e)
    e.commit_broadcast()  # it got in; no block after it
    now = float(EXPIRES_AT + 1)
    for _ in range(5):
        assert trader.step(now, slot=SLOT) is Outcome.LATER
        due = trader.next_retry()
        assert due is not None and due - now <= CHAIN_POLL_S
        now = due
    gate = SLOT - genesis.market.gate_closure_seconds
    assert trader.step(gate, slot=SLOT) is Outcome.PLACED
    assert wire.calls["RequestOptions"] == 1


def test_an_agent_restarted_does_not_order_again_for_a_slot_it_ordered(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    assert _trader(e, _Wire(e.servicer)).step(NOW, slot=SLOT) is Outcome.PLACED
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    wire = _Wire(e.servicer)
    restarted = _trader(e, wire)  # a new process: no memory of the slot
    assert restarted.step(NOW + 60, slot=SLOT) is Outcome.PLACED
    assert "RequestOptions" not in wire.calls
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]
    # A look that fails is looked again (before: the slot counted as looked up).
    again = _trader(e, wire)
    again._ledger.committer.drop["ListOrders"] = (1, grpc.StatusCode.UNAVAILABLE)
    assert again.step(NOW + 60, slot=SLOT) is Outcome.LATER
    assert again.step(NOW + 62, slot=SLOT) is Outcome.PLACED
    assert "RequestOptions" not in wire.calls


@pytest.mark.parametrize("acknowledged", [True, False])
def test_a_restart_while_the_order_is_in_flight_resumes_it_never_a_second(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path, acknowledged: bool) -> None:
    """The agent is restarted after its PlaceOrder left (acknowledged or not) but before any
    block carries it: the committer knows no order yet. Before, the new run ordered again
    (two orders for one slot); now it resumes the journalled PlaceOrder."""
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    if not acknowledged:
        wire.lose["SubmitTransaction"] = (5, grpc.StatusCode.DEADLINE_EXCEEDED)
    journal = PlacementJournal(tmp_path / "presale")
    first = _trader(e, wire, journal=journal)
    assert first.step(NOW, slot=SLOT) is (Outcome.PLACED if acknowledged else Outcome.LATER)
    journal.close()  # the process ends; nothing is in a block yet
    journal = PlacementJournal(tmp_path / "presale")
    restarted = _trader(e, wire, journal=journal)
    assert restarted.step(NOW + 5, slot=SLOT) is Outcome.PLACED  # the same envelope again
    assert wire.calls["RequestOptions"] == 1
    e.commit_broadcast()
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]
    # Once the slot's market closed, its record goes.
    restarted.step(SLOT, slot=SLOT + 3600)
    assert journal.open_placements(after=0) == []
    journal.close()


def test_a_restart_before_the_option_arrived_asks_with_the_same_request(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    """The endorser answered a trade request (and holds energy for its option), but the
    agent was restarted before the answer reached it. Before, the request lived in memory
    only: the new run signed a new one, found the energy held by the first option (which
    then lapsed, charged to its member). Now the request is journalled before it leaves and
    the new run sends it again: the endorser gives the kept option, and that one is placed."""
    e = make_endorser(genesis, consortium_dir)
    e.accept("meter-1", e.request("meter-1", terms("meter-1", SELL, 250_000, 6000)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    wire = _Wire(e.servicer)
    wire.lose["RequestOptions"] = (1, grpc.StatusCode.UNAVAILABLE)  # the process ends
    journal = PlacementJournal(tmp_path / "presale")
    first = _trader(e, wire, meter="meter-2", journal=journal)
    assert first.step(NOW, slot=SLOT) is Outcome.LATER
    journal.close()
    journal = PlacementJournal(tmp_path / "presale")
    e.clock[0] = NOW + 3
    restarted = _trader(e, wire, meter="meter-2", journal=journal)
    assert restarted.step(NOW + 3, slot=SLOT) is Outcome.PLACED
    lost, resent = wire.answered["RequestOptions"]
    assert resent.option == lost.option
    assert journal.open_requests(after=0) == []  # the PlaceOrder replaced it
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    taken = market_pb2.TradeOption.FromString(lost.option.payload)
    assert taken.trades
    assert _placed_option_ids(e, "meter-2") == [taken.option_id]
    journal.close()


def test_a_journalled_request_too_old_to_send_again_is_made_anew(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    wire.drop["RequestOptions"] = (1, grpc.StatusCode.UNAVAILABLE)
    journal = PlacementJournal(tmp_path / "presale")
    assert _trader(e, wire, journal=journal).step(NOW, slot=SLOT) is Outcome.LATER
    [pending] = journal.open_requests(after=0)
    journal.close()
    later = NOW + REQUEST_REUSE_S + 1
    e.clock[0] = later
    journal = PlacementJournal(tmp_path / "presale")
    assert _trader(e, wire, journal=journal).step(later, slot=SLOT) is Outcome.PLACED
    [answer] = wire.answered["RequestOptions"]
    option = market_pb2.TradeOption.FromString(answer.option.payload)
    assert option.request_digest != request_digest(pending.request.payload)  # a new one
    assert _orders(e) == [] and e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]
    journal.close()


def test_a_request_refused_for_good_is_not_asked_again_after_a_restart(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    """Its journal record goes with the refusal: a restarted agent does not bring the slot
    back (a slot other than the next is otherwise only retried while refused for now)."""
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    journal = PlacementJournal(tmp_path / "presale")
    greedy = _trader(e, wire, sell_price=10**12, journal=journal)  # beyond the price band
    assert greedy.step(NOW, slot=SLOT) is Outcome.REFUSED
    assert journal.open_requests(after=0) == []
    journal.close()
    journal = PlacementJournal(tmp_path / "presale")
    restarted = _trader(e, wire, sell_price=10**12, journal=journal)
    restarted.step(NOW + 1, slot=SLOT + 3600)  # the next slot is another one now
    assert wire.calls["RequestOptions"] == 1  # SLOT was not asked for again
    journal.close()


def test_a_resent_order_found_committed_invalid_is_ordered_anew(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    """The journalled PlaceOrder reached a block after its option expired (invalid there). Sent
    again after a restart it is ALREADY_EXISTS: before, that counted as placed and the slot
    had no order; now the agent looks it up and orders anew."""
    e = make_endorser(genesis, consortium_dir)
    journal = PlacementJournal(tmp_path / "presale")
    wire, _ = _answers_lost(e, journal=journal)
    late = e.ledger.commit(e.chain.block(e.broadcaster.sent, timestamp=EXPIRES_AT + 1))
    e.broadcaster.sent.clear()
    e.servicer.books.on_commit(late)
    assert Code.TX_VALIDATION_CODE_VALID not in late.codes
    journal.close()
    journal = PlacementJournal(tmp_path / "presale")
    e.clock[0] = EXPIRES_AT + 2
    restarted = _trader(e, wire, journal=journal)
    assert restarted.step(NOW + 5, slot=SLOT) is Outcome.PLACED
    assert wire.calls["RequestOptions"] == 2
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert _orders(e) == [(market_pb2.ORDER_SIDE_SELL, 3000)]
    journal.close()


def test_a_damaged_journal_record_is_dropped_not_fatal(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    journal = PlacementJournal(tmp_path / "presale")
    batch = WriteBatch()
    batch.put(b"p/" + SLOT.to_bytes(8, "big"), b"\x00" * 9 + b"\xff\xff garbage")
    batch.put(b"r/" + SLOT.to_bytes(8, "big"), b"\x00" * 8 + b"\xff\xff garbage")
    # An envelope that decodes around a payload that is no TradeRequest.
    batch.put(b"r/" + (SLOT + 3600).to_bytes(8, "big"), NOW.to_bytes(8, "big")
              + envelope_pb2.SignedEnvelope(payload=b"\xff\xff not a request").SerializeToString())
    journal._store.commit(batch)
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    assert _trader(e, wire, journal=journal).step(NOW, slot=SLOT) is Outcome.PLACED
    assert wire.calls["RequestOptions"] == 1
    assert [p.slot for p in journal.open_placements(after=0)] == [SLOT]  # the new, sound one
    assert journal.open_requests(after=0) == []  # both dropped (the first then replaced)
    journal.close()


def test_a_committer_away_delays_the_slot_by_the_backoff_not_a_poll(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    trader = _trader(e, wire)
    committer = trader._ledger.committer
    committer.drop["ListReadings"] = (2, grpc.StatusCode.UNAVAILABLE)  # the forecast's reads
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    assert trader.next_retry() == NOW + 1.0
    assert trader.step(NOW + 0.5, slot=SLOT) is None  # not before
    assert trader.step(NOW + 1, slot=SLOT) is Outcome.LATER
    assert trader.next_retry() == NOW + 1 + 2.0
    assert committer.calls["ListReadings"] == 2
    assert trader.step(NOW + 3, slot=SLOT) is Outcome.PLACED


def test_no_retry_once_the_slot_market_closed_nor_after_a_refusal_for_good(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    wire = _Wire(e.servicer)
    wire.drop["RequestOptions"] = (1, grpc.StatusCode.UNAVAILABLE)
    trader = _trader(e, wire)
    assert trader.step(NOW, slot=SLOT) is Outcome.LATER
    gate = SLOT - genesis.market.gate_closure_seconds
    closed = ("gridledger_meter_presale_orders_total", {"side": "sell", "result": "gate_closed"})
    before = REGISTRY.get_sample_value(*closed) or 0
    assert trader.step(gate, slot=SLOT) is Outcome.GATE_CLOSED
    assert REGISTRY.get_sample_value(*closed) == before + 1
    assert trader.next_retry() is None
    assert wire.calls == {"RequestOptions": 1}
    # A preset condition refuses for good (a price beyond the band): asked once.
    e2 = make_endorser(genesis, consortium_dir)
    wire2 = _Wire(e2.servicer)
    greedy = _trader(e2, wire2, sell_price=10**12)
    assert greedy.step(NOW, slot=SLOT) is Outcome.REFUSED
    assert greedy.step(NOW + 100, slot=SLOT) is None
    assert wire2.calls == {"RequestOptions": 1}


def test_a_failing_step_turns_the_agent_not_serving_until_a_step_completes(
        genesis: Genesis, consortium_dir: Path) -> None:
    """A step that fails unexpectedly (a bug, the journal's disk) was only logged: the thread
    went on failing behind a SERVING health check. Now three in a row report it unhealthy
    until a step completes (one passing failure does not), and it keeps going."""
    e = make_endorser(genesis, consortium_dir)
    trader = _trader(e, _Wire(e.servicer))
    trader._policy = dataclasses.replace(trader._policy, every_seconds=0.001)
    stop = threading.Event()
    reports: list[bool] = []
    failures = [OSError("journal: no space left on device")] * UNHEALTHY_AFTER

    def step() -> None:
        if failures:
            raise failures.pop()
        stop.set()

    trader.step = step  # type: ignore[method-assign]
    thread = threading.Thread(target=trader.run, args=(stop, reports.append))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert reports == [False, True]


def test_one_failing_step_does_not_turn_the_agent_not_serving(
        genesis: Genesis, consortium_dir: Path) -> None:
    e = make_endorser(genesis, consortium_dir)
    trader = _trader(e, _Wire(e.servicer))
    trader._policy = dataclasses.replace(trader._policy, every_seconds=0.001)
    stop = threading.Event()
    reports: list[bool] = []
    outcomes = [None, OSError("a passing fault")] * 3  # popped from the end

    def step() -> None:
        if not outcomes:
            stop.set()
            return
        failure = outcomes.pop()
        if failure is not None:
            raise failure

    trader.step = step  # type: ignore[method-assign]
    trader.run(stop, reports.append)
    assert reports == []
