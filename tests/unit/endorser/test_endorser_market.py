"""The endorser's market RPCs in-process: a real servicer over a Ledger on a MemoryStore, with
a recording broadcaster in place of the orderers (the network boundary).

Each preset condition is refused with its own gRPC status and a message naming it, and
nothing is recorded: no broadcast, no state change, no book change. Then the whole flow:
options, acceptance, commit, book cache updates, partial fills, stale options, rebuild."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from broadcast_fakes import SealsThenBroadcasts
from grpc_helpers import Aborted, FakeContext
from ledger_helpers import ChainBuilder, identity
from market_helpers import BUY, NOW, SELL, SLOT, history, place, signed_request, terms, tx_id
from nacl import bindings as sodium
from prometheus_client import REGISTRY

from gridledger.common.v1 import block_pb2, envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core import sigcache
from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore
from gridledger_endorser.admission import Admission
from gridledger_endorser.book_cache import HOLD_GRACE_SECONDS, BookCache
from gridledger_endorser.service import EndorserServicer

ASK = 250_000


@dataclass
class RecordingBroadcaster(SealsThenBroadcasts):
    sent: list[bytes] = field(default_factory=list)

    def broadcast(self, endorsed_transaction: bytes,
                  tx_id: str) -> orderer_pb2.BroadcastResponse:
        self.sent.append(endorsed_transaction)
        return orderer_pb2.BroadcastResponse(tx_id=tx_id)



def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Consensus proofs are tested with the consensus core."""


@dataclass
class Endorser:
    servicer: EndorserServicer
    ledger: Ledger
    chain: ChainBuilder
    broadcaster: RecordingBroadcaster
    ids: dict[str, SigningIdentity]
    clock: list[float]  # the servicer's clock, settable

    def request(self, signer: str, order: market_pb2.OrderTerms
                ) -> endorser_pb2.RequestOptionsResponse:
        envelope = signed_request(self.ids[signer], order, int(self.clock[0]))
        return self.servicer.RequestOptions(
            endorser_pb2.RequestOptionsRequest(request=envelope), FakeContext())  # type: ignore[arg-type]

    def submit(self, envelope: envelope_pb2.SignedEnvelope) -> str:
        return self.servicer.SubmitTransaction(
            endorser_pb2.SubmitTransactionRequest(envelope=envelope), FakeContext()).tx_id  # type: ignore[arg-type]

    def accept(self, signer: str, response: endorser_pb2.RequestOptionsResponse
               ) -> envelope_pb2.SignedEnvelope:
        envelope = place(self.ids[signer], response.option)
        self.submit(envelope)
        return envelope

    def commit_broadcast(self) -> list[int]:
        """Order what was broadcast into one block and commit it, as the follower would."""
        result = self.ledger.commit(self.chain.block(self.broadcaster.sent, timestamp=NOW))
        self.broadcaster.sent.clear()
        self.servicer.books.on_commit(result)
        return result.codes

    def book(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        depth = self.servicer.GetBook(endorser_pb2.GetBookRequest(slot_start=SLOT),
                                      FakeContext())  # type: ignore[arg-type]
        return ([(lv.price, lv.quantity_wh, lv.orders) for lv in depth.bids],
                [(lv.price, lv.quantity_wh, lv.orders) for lv in depth.asks])


@pytest.fixture()
def endorser(genesis: Genesis, consortium_dir: Path) -> Endorser:
    return make_endorser(genesis, consortium_dir)


def make_endorser(genesis: Genesis, consortium_dir: Path,
                  admission: Admission | None = None) -> Endorser:
    """An endorser whose replica holds two days of three meters' history."""
    ids = {n: identity(consortium_dir, n)
           for n in ("endorser-1", "meter-1", "meter-2", "meter-3", "plant-1")}
    ledger = Ledger(MemoryStore(), genesis, accept_proof)
    chain = ChainBuilder()
    e = ids["endorser-1"]
    txs = (history(ids["meter-1"], e, SLOT, produced=2000, consumed=500)  # surplus 6,000 Wh
           + history(ids["meter-2"], e, SLOT, produced=0, consumed=1500)  # deficit 6,000 Wh
           + history(ids["meter-3"], e, SLOT, produced=100, consumed=600))  # deficit 2,000 Wh
    assert set(ledger.commit(chain.block(txs, timestamp=NOW)).codes) == {
        Code.TX_VALIDATION_CODE_VALID}
    broadcaster = RecordingBroadcaster()
    clock = [float(NOW)]
    servicer = EndorserServicer(ledger, e, broadcaster, clock=lambda: clock[0],  # type: ignore[arg-type]
                                admission=admission)
    return Endorser(servicer, ledger, chain, broadcaster, ids, clock)


HOUR = 3600
CLOSED_SLOT = (NOW // HOUR + 1) * HOUR  # gate closure was at the start of this hour
CONDITIONS = {
    # case: (signer, terms, gRPC status, condition in the message)
    "signer_not_meter": ("plant-1", terms("plant-1", SELL, ASK, 1000),
                         grpc.StatusCode.PERMISSION_DENIED, "signer_not_meter"),
    "not_own_account": ("meter-1", terms("meter-2", SELL, ASK, 1000),
                        grpc.StatusCode.PERMISSION_DENIED, "not_own_account"),
    "side_unspecified": ("meter-1", terms("meter-1", 0, ASK, 1000),
                         grpc.StatusCode.INVALID_ARGUMENT, "side_unspecified"),
    "slot_not_aligned": ("meter-1", terms("meter-1", SELL, ASK, 1000, slot=SLOT + 900),
                         grpc.StatusCode.INVALID_ARGUMENT, "slot_not_aligned"),
    "slot_after_gate_closure": ("meter-1", terms("meter-1", SELL, ASK, 1000, slot=CLOSED_SLOT),
                                grpc.StatusCode.FAILED_PRECONDITION, "slot_not_open"),
    "slot_not_open_yet": ("meter-1", terms("meter-1", SELL, ASK, 1000, slot=SLOT + 3 * 86400),
                          grpc.StatusCode.FAILED_PRECONDITION, "slot_not_open"),
    "price_above_band": ("meter-1", terms("meter-1", SELL, 2_000_000, 1000),
                         grpc.StatusCode.INVALID_ARGUMENT, "price_out_of_band"),
    "price_zero": ("meter-1", terms("meter-1", SELL, 0, 1000),
                   grpc.StatusCode.INVALID_ARGUMENT, "price_out_of_band"),
    "price_off_tick": ("meter-1", terms("meter-1", SELL, 250_500, 1000),
                       grpc.StatusCode.INVALID_ARGUMENT, "price_off_tick"),
    "quantity_zero": ("meter-1", terms("meter-1", SELL, ASK, 0),
                      grpc.StatusCode.INVALID_ARGUMENT, "quantity_not_positive"),
    "quantity_not_lot_multiple": ("meter-1", terms("meter-1", SELL, ASK, 150),
                                  grpc.StatusCode.INVALID_ARGUMENT, "quantity_not_lot_multiple"),
    "sell_above_surplus": ("meter-1", terms("meter-1", SELL, ASK, 6700),
                           grpc.StatusCode.FAILED_PRECONDITION, "quantity_above_forecast"),
    "buy_without_deficit": ("meter-1", terms("meter-1", BUY, ASK, 100),
                            grpc.StatusCode.FAILED_PRECONDITION, "quantity_above_forecast"),
}


def _requests(side: str, result: str) -> float:
    value = REGISTRY.get_sample_value("gridledger_endorser_trade_requests_total",
                                      {"side": side, "result": result})
    return value or 0.0


@pytest.mark.parametrize("case", sorted(CONDITIONS))
def test_each_preset_condition_is_refused_by_name_and_records_nothing(
        endorser: Endorser, case: str) -> None:
    # A resting order exists, so "nothing recorded" covers the book too.
    endorser.accept("meter-1", endorser.request("meter-1", terms("meter-1", SELL, ASK, 1000)))
    endorser.commit_broadcast()
    signer, order, status, condition = CONDITIONS[case]
    state = list(endorser.ledger.store.scan(b""))
    book = endorser.servicer.books.open_orders()
    side = {BUY: "buy", SELL: "sell"}.get(order.side, "unspecified")
    counted = _requests(side, condition)
    with pytest.raises(Aborted) as err:
        endorser.request(signer, order)
    assert err.value.code == status
    assert f": {condition}: " in err.value.details, err.value.details
    assert endorser.broadcaster.sent == []
    assert list(endorser.ledger.store.scan(b"")) == state
    assert endorser.servicer.books.open_orders() == book
    assert _requests(side, condition) == counted + 1


def test_quantity_message_gives_the_numbers(endorser: Endorser) -> None:
    with pytest.raises(Aborted) as err:
        endorser.request("meter-1", terms("meter-1", SELL, ASK, 6700))
    assert ("forecast net 6000 Wh" in err.value.details
            and "allowance 6600 Wh" in err.value.details), err.value.details


def test_bad_signature_and_unknown_signer_are_unauthenticated(endorser: Endorser,
                                                             tmp_path: Path) -> None:
    envelope = signed_request(endorser.ids["meter-1"], terms("meter-1", SELL, ASK, 1000))
    envelope.signature = bytes(64)
    create_consortium(tmp_path / "rogue", default_topology())
    stranger = SigningIdentity.load(tmp_path / "rogue", "meter-1")
    for bad in (envelope, signed_request(stranger, terms("meter-1", SELL, ASK, 1000))):
        with pytest.raises(Aborted) as err:
            endorser.servicer.RequestOptions(endorser_pb2.RequestOptionsRequest(request=bad),
                                             FakeContext())  # type: ignore[arg-type]
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert endorser.broadcaster.sent == []


def test_options_trades_partial_fills_and_the_book_cache(endorser: Endorser) -> None:
    matched_before = REGISTRY.get_sample_value(
        "gridledger_endorser_matching_seconds_count") or 0.0
    # A sell with nothing to match: the option rests it whole.
    first = endorser.request("meter-1", terms("meter-1", SELL, ASK, 3000))
    option = market_pb2.TradeOption.FromString(first.option.payload)
    assert (list(option.trades), option.rest_wh, option.endorser) == ([], 3000, "endorser-1")
    assert (first.forecast_net_wh, first.allowance_wh, first.committed_wh) == (6000, 6600, 0)
    assert endorser.book() == ([], [])  # nothing is in the book before it is committed
    sell = endorser.accept("meter-1", first)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert endorser.book() == ([], [(ASK, 3000, 1)])

    # A buy above the ask: one trade at the resting order's price, for the smaller quantity.
    second = endorser.request("meter-2", terms("meter-2", BUY, 260_000, 1000))
    option = market_pb2.TradeOption.FromString(second.option.payload)
    assert [(t.maker_order_id, t.maker, t.price, t.quantity_wh) for t in option.trades] == [
        (tx_id(sell), "meter-1", ASK, 1000)]
    assert option.rest_wh == 0
    endorser.accept("meter-2", second)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert endorser.book() == ([], [(ASK, 2000, 1)])

    # A buy larger than what is left: the remainder (claim 4) rests as the new order.
    third = endorser.request("meter-3", terms("meter-3", BUY, ASK, 2200))
    option = market_pb2.TradeOption.FromString(third.option.payload)
    assert ([t.quantity_wh for t in option.trades], option.rest_wh) == ([2000], 200)
    endorser.accept("meter-3", third)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert endorser.book() == ([(ASK, 200, 1)], [])

    # The book rebuilt from the ledger (an endorser restart) is the same book.
    rebuilt = BookCache(endorser.ledger, "endorser-1", clock=lambda: NOW)
    assert rebuilt.open_orders() == endorser.servicer.books.open_orders()
    assert (REGISTRY.get_sample_value("gridledger_endorser_matching_seconds_count") or 0.0) == \
        matched_before + 3


def test_concurrent_options_never_offer_the_same_resting_energy(endorser: Endorser) -> None:
    endorser.accept("meter-1", endorser.request("meter-1", terms("meter-1", SELL, ASK, 2000)))
    endorser.commit_broadcast()
    # Two buyers ask for the same 2,000 Wh before either is committed: the first option holds
    # it; the second would rest its bid across the held ask (which the ledger still shows
    # open), a concurrency conflict: ABORTED, and nothing held or recorded for it.
    a = endorser.request("meter-2", terms("meter-2", BUY, ASK, 2000))
    assert [t.quantity_wh for t in _option(a).trades] == [2000]
    assert endorser.book() == ([], [])  # the held ask is out of the cache
    with pytest.raises(Aborted) as err:
        endorser.request("meter-3", terms("meter-3", BUY, ASK, 2000))
    assert err.value.code == grpc.StatusCode.ABORTED and "held by options" in err.value.details
    # A bid below the held ask does not cross it and rests.
    low = endorser.request("meter-3", terms("meter-3", BUY, ASK - 1000, 1000))
    assert _option(low).trades == [] and _option(low).rest_wh == 1000
    endorser.accept("meter-2", a)
    endorser.accept("meter-3", low)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID] * 2
    assert endorser.book() == ([(ASK - 1000, 1000, 1)], [])
    # Once the holding option is in a block, asking again works.
    again = endorser.request("meter-3", terms("meter-3", BUY, ASK, 1000))
    assert _option(again).trades == [] and _option(again).rest_wh == 1000


def test_an_unused_option_holds_energy_only_until_it_expires(endorser: Endorser) -> None:
    endorser.accept("meter-1", endorser.request("meter-1", terms("meter-1", SELL, ASK, 2000)))
    endorser.commit_broadcast()
    unused = endorser.request("meter-2", terms("meter-2", BUY, ASK, 1500))
    assert endorser.book() == ([], [(ASK, 500, 1)])
    endorser.clock[0] = _option(unused).expires_at + HOLD_GRACE_SECONDS + 1  # past the grace
    later = endorser.request("meter-3", terms("meter-3", BUY, ASK, 2000))
    assert [t.quantity_wh for t in _option(later).trades] == [2000]


def test_stale_options_fail_at_commit_and_the_cache_follows_the_ledger(
        endorser: Endorser) -> None:
    sell = endorser.accept("meter-1", endorser.request("meter-1",
                                                        terms("meter-1", SELL, ASK, 2000)))
    endorser.commit_broadcast()
    option = endorser.request("meter-2", terms("meter-2", BUY, ASK, 2000))
    # The seller cancels in the block that also carries the buyer's acceptance: both pass
    # simulation (the state has not moved yet); the ledger takes the cancel, which comes
    # first, and refuses the now stale option.
    cancel = endorser.ids["meter-1"].new_transaction(
        "cancel_order", market_pb2.CancelOrder(order_id=tx_id(sell)), timestamp=NOW)
    endorser.submit(cancel)
    accepted = endorser.accept("meter-2", option)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID,
                                           Code.TX_VALIDATION_CODE_STATE_CONFLICT]
    assert endorser.book() == ([], [])
    # The refused option can no longer pass simulation either.
    with pytest.raises(Aborted) as err:
        endorser.submit(accepted)
    assert err.value.code in (grpc.StatusCode.FAILED_PRECONDITION,
                              grpc.StatusCode.ALREADY_EXISTS)
    with pytest.raises(Aborted) as err:
        endorser.accept("meter-2", option)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert endorser.broadcaster.sent == []


def _option(response: endorser_pb2.RequestOptionsResponse) -> market_pb2.TradeOption:
    return market_pb2.TradeOption.FromString(response.option.payload)


def test_cancel_removes_the_order_from_the_cache(endorser: Endorser) -> None:
    sell = endorser.accept("meter-1", endorser.request("meter-1",
                                                        terms("meter-1", SELL, ASK, 1000)))
    endorser.commit_broadcast()
    assert endorser.book() == ([], [(ASK, 1000, 1)])
    other = endorser.ids["meter-2"].new_transaction(
        "cancel_order", market_pb2.CancelOrder(order_id=tx_id(sell)), timestamp=NOW)
    with pytest.raises(Aborted) as err:
        endorser.submit(other)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    own = endorser.ids["meter-1"].new_transaction(
        "cancel_order", market_pb2.CancelOrder(order_id=tx_id(sell)), timestamp=NOW)
    endorser.submit(own)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert endorser.book() == ([], [])
    assert endorser.ledger.get_state(schema.order_key(tx_id(sell))) is not None


def test_an_order_costs_the_endorser_only_its_meters_signatures(
        endorser: Endorser, monkeypatch: pytest.MonkeyPatch) -> None:
    """Request, submit and the replica's commit: the meter's request and its transaction are
    verified once each; the option the endorser signed itself is never verified again (it was
    verified at submit and at the replica's commit, two Ed25519 verifications per order).
    Counted at libsodium, under the cache and every other caller."""
    verified: list[bytes] = []
    real = sodium.crypto_sign_open

    def counting(signed: bytes, public_key: bytes) -> bytes:
        verified.append(signed[64:])
        return real(signed, public_key)

    sigcache.VERIFIED.clear()
    monkeypatch.setattr(sodium, "crypto_sign_open", counting)
    response = endorser.request("meter-1", terms("meter-1", SELL, ASK, 1000))
    envelope = endorser.accept("meter-1", response)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert market_pb2.TradeRequest.FromString(verified[0]).terms.quantity_wh == 1000
    assert verified[1:] == [envelope.payload]  # the transaction, at submit


def test_after_a_failed_update_and_rebuild_the_next_block_reads_the_books_again(
        endorser: Endorser, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block whose book update failed, and the rebuild after it too (a read error), left
    the books without it, and the next block was applied on top: matching went on against
    books missing an order, with nothing said. Blocks that do not follow the last one
    applied now make the books be read again, and while they cannot be the endorser's
    health component "books" says so (the books miss a block: options judged against them
    would be stale), until a rebuild works."""
    books = endorser.servicer.books
    health: list[bool] = []
    books.on_health = health.append
    original_rebuild = books.rebuild

    def fails(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    endorser.accept("meter-1", endorser.request("meter-1", terms("meter-1", SELL, ASK, 2000)))
    with monkeypatch.context() as failing:
        failing.setattr(books, "_apply", fails)
        failing.setattr(books, "rebuild", fails)
        with pytest.raises(OSError):  # the follower logs and counts it (pass_on)
            endorser.commit_broadcast()
    assert endorser.book() == ([], [])  # the books missed the ask
    assert health == [False]
    endorser.accept("meter-3", endorser.request("meter-3", terms("meter-3", BUY, ASK - 1000,
                                                                  1000)))
    rebuilt: list[int] = []

    def rebuild(*args: object) -> None:
        rebuilt.append(1)
        original_rebuild(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(books, "rebuild", rebuild)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert rebuilt == [1]
    assert endorser.book() == ([(ASK - 1000, 1000, 1)], [(ASK, 2000, 1)])
    assert health == [False, True]
