"""Members share what options hold (book_cache.py): tried as a hostile member would, whose CA
enrols as many meters as it likes, each with a large deficit, that ask for options on all of a
slot's energy and never place them (or place them to fail, or relay another member's meters'
requests and drop the options). The real servicer over a Ledger on a MemoryStore, as in
test_endorser_market, with a second member ("rival") beside the devnet's community. Calls
without a TLS caller are charged to the signer's organisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext
from ledger_helpers import ChainBuilder, endorsed, identity
from market_helpers import (
    BUY,
    NOW,
    SELL,
    SLOT,
    cancel,
    history,
    option,
    place,
    signed_request,
    terms,
)
from test_endorser_market import ASK, Endorser, RecordingBroadcaster, _option, accept_proof

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.consortium import NodeSpec, OrgSpec, create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.storage import MemoryStore
from gridledger_endorser.book_cache import HOLD_GRACE_SECONDS
from gridledger_endorser.hold_conduct import HoldConduct
from gridledger_endorser.service import EndorserServicer

RIVALS = ("rival-1", "rival-2", "rival-3")
FUNDS = 10**12


@pytest.fixture(scope="module")
def two_members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return funded_consortium(tmp_path_factory.mktemp("two-members"))


def funded_consortium(directory: Path, *more: OrgSpec) -> Path:
    """The devnet's organisations, a rival (meters and an endorser) and `more`, every meter
    and plant funded; made in `directory`."""
    topology = default_topology()
    topology.orgs.append(OrgSpec("rival", [*(NodeSpec(n, Role.METER) for n in RIVALS),
                                           NodeSpec("rival-admin", Role.ADMIN),
                                           NodeSpec("rival-endorser", Role.ENDORSER)]))
    topology.orgs.extend(more)
    balancing = sorted(topology.names(Role.SETTLEMENT))[0]
    funded = [*topology.names(Role.METER), *topology.names(Role.PLANT), balancing]
    create_consortium(directory, topology, settlement={
        "balancing_account": balancing, "allocations": {n: FUNDS for n in funded}})
    return directory


@dataclass
class TwoMembers(Endorser):
    options: dict[str, endorser_pb2.RequestOptionsResponse] = field(default_factory=dict)


@pytest.fixture()
def e(two_members: Path) -> TwoMembers:
    """meter-1 (community) rests an ask of 6,000 Wh; meter-2 (community) and every rival
    meter have a deficit of 6,000 Wh (allowance 6,600)."""
    return _two_members(two_members)


def _two_members(two_members: Path, sellers: tuple[str, ...] = ("meter-1",),
                 more_meters: tuple[str, ...] = ()) -> TwoMembers:
    """As `e`, with each of `sellers` a surplus of 6,000 Wh (only meter-1 rests an ask);
    `more_meters`: meters of further members in the consortium, with histories too."""
    genesis = Genesis.load(two_members / "genesis.json")
    meters = ("meter-1", "meter-2", *RIVALS, *more_meters)
    ids = {n: identity(two_members, n) for n in ("endorser-1", "rival-endorser", *meters)}
    ledger = Ledger(MemoryStore(), genesis, accept_proof)
    chain = ChainBuilder()
    endorser = ids["endorser-1"]
    txs = []
    for meter in meters:
        produced, consumed = (2000, 500) if meter in sellers else (0, 1500)
        txs += history(ids[meter], endorser, SLOT, produced=produced, consumed=consumed)
    assert set(ledger.commit(chain.block(txs, timestamp=NOW)).codes) == {
        Code.TX_VALIDATION_CODE_VALID}
    clock = [float(NOW)]
    servicer = EndorserServicer(ledger, endorser, RecordingBroadcaster(),  # type: ignore[arg-type]
                                clock=lambda: clock[0])
    made = TwoMembers(servicer, ledger, chain, servicer._broadcaster, ids, clock)  # type: ignore[arg-type]
    made.accept("meter-1", made.request("meter-1", terms("meter-1", SELL, ASK, 6000)))
    assert made.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    return made


def _ask(e: TwoMembers, meter: str, wh: int, price: int = ASK, member: str = ""
         ) -> tuple[grpc.StatusCode, str, int]:
    """(status, message, Wh its option trades) of `meter`'s buy, called by `member`."""
    request = signed_request(e.ids[meter], terms(meter, BUY, price, wh), int(e.clock[0]))
    out = e.servicer.options(request, member)
    traded = 0
    if out.response is not None:
        e.options[meter] = out.response
        traded = sum(t.quantity_wh for t in _option(out.response).trades)
    return out.code, out.message, traded


def _takes(e: TwoMembers, meter: str, wh: int, member: str = "") -> None:
    code, message, traded = _ask(e, meter, wh, member=member)
    assert (code, traded) == (grpc.StatusCode.OK, wh), message


def _exhausted(e: TwoMembers, meter: str, wh: int) -> str:
    code, message, _ = _ask(e, meter, wh)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
    return message


def _places(e: TwoMembers, meter: str, block_time: int = NOW) -> list[int]:
    """`meter` places its last option; the block (at `block_time`) is committed."""
    e.submit(place(e.ids[meter], e.options[meter].option))
    result = e.ledger.commit(e.chain.block(e.broadcaster.sent, timestamp=block_time))
    e.broadcaster.sent.clear()
    e.servicer.books.on_commit(result)
    return result.codes


LAPSED = NOW + 30 + HOLD_GRACE_SECONDS + 1  # past every option of NOW's expiry (30 s) and its grace


def _lapse(e: TwoMembers) -> None:
    """Time passes beyond every option of NOW (and its grace), and a block shows it: a lapse
    is charged only once a block's time is past the option's expiry."""
    e.clock[0] = LAPSED
    result = e.ledger.commit(e.chain.block([], timestamp=LAPSED))
    e.servicer.books.on_commit(result)


def test_a_member_shares_a_slot_once_another_asks_and_lapsing_costs_its_first_option(
        e: TwoMembers) -> None:
    # While only the rival asks, its meters may hold all the slot's 6,000 Wh.
    _takes(e, "rival-1", 3000)
    _takes(e, "rival-2", 3000)
    # The community asks: everything is held (its remainder would rest across it). From now
    # on the two share the slot's 6,000 Wh.
    assert _ask(e, "meter-2", 3000)[0] == grpc.StatusCode.ABORTED

    # The rival's options lapse unplaced. It asks again before the community does: no first
    # option of any size now (it let 6,000 Wh lapse and traded nothing), only its share.
    _lapse(e)
    message = _exhausted(e, "rival-1", 6000)
    assert "at most 3000 Wh" in message and "shared by the 2 members" in message
    assert "let 6000 Wh lapse" in message and "traded 0 Wh" in message
    # Its share grows when the community stops asking (60 s after its last request at NOW).
    request = signed_request(e.ids["rival-1"], terms("rival-1", BUY, ASK, 6000), LAPSED)
    assert e.servicer.options(request, "").retry_after_ms == (NOW + 61 - LAPSED) * 1000
    _takes(e, "rival-1", 2000)
    _takes(e, "rival-2", 1000)
    assert "hold 3000 Wh" in _exhausted(e, "rival-3", 100)
    # The community finds its share free.
    _takes(e, "meter-2", 3000)


def test_a_member_in_good_standing_may_clear_a_thin_book_and_trading_restores_it(
        e: TwoMembers) -> None:
    _takes(e, "meter-2", 1000)  # the community asks (and holds 1,000 Wh)
    _takes(e, "rival-1", 5000)  # the rival's first option takes the rest, above its 3,000
    _lapse(e)  # both lapse
    _exhausted(e, "rival-1", 5000)
    # A resting order placed on the ledger does not restore it (it could be cancelled in the
    # next block); trades do.
    code, _, traded = _ask(e, "rival-2", 6000, price=ASK - 10_000)
    assert (code, traded) == (grpc.StatusCode.OK, 0)
    assert _places(e, "rival-2", LAPSED) == [Code.TX_VALIDATION_CODE_VALID]
    assert "traded 0 Wh" in _exhausted(e, "rival-1", 5000)
    _takes(e, "rival-1", 3000)
    assert _places(e, "rival-1", LAPSED) == [Code.TX_VALIDATION_CODE_VALID]
    _takes(e, "rival-3", 1500)
    assert _places(e, "rival-3", LAPSED) == [Code.TX_VALIDATION_CODE_VALID]
    # Traded 4,500 of 5,000 lapsed: still its share only (1,500 left, 750 each).
    assert "at most 750 Wh" in _exhausted(e, "rival-1", 1500)
    _takes(e, "rival-1", 500)
    assert _places(e, "rival-1", LAPSED) == [Code.TX_VALIDATION_CODE_VALID]
    # Traded 5,000: in good standing again, its first option takes the whole 1,000 left.
    _takes(e, "rival-3", 1000)


def test_a_place_order_that_fails_in_its_block_ends_no_hold_and_it_lapses(
        e: TwoMembers) -> None:
    """The rival places its option at its expiry, so the endorser (at its clock) accepts it
    and the block (later) refuses it: before, the hold ended without a lapse, and the next
    first option took the whole slot again. Now an invalid place_order ends nothing; the
    option lapses at its expiry."""
    _takes(e, "rival-1", 6000)
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # the community asks
    expiry = _option(e.options["rival-1"]).expires_at
    e.clock[0] = expiry
    assert _places(e, "rival-1", block_time=expiry + 1) != [Code.TX_VALIDATION_CODE_VALID]
    e.clock[0] = expiry + 1  # the block's time is past the expiry: no block can place it
    assert "let 6000 Wh lapse" in _exhausted(e, "rival-2", 6000)
    # Nor does the book cache's rebuild (after a block it could not apply) forget it.
    e.servicer.books.rebuild()
    assert "let 6000 Wh lapse" in _exhausted(e, "rival-2", 6000)


def test_a_hold_lasts_while_a_block_may_still_place_its_option(e: TwoMembers) -> None:
    """Block times trail the endorser's clock by up to the cluster's skew. Before, a hold
    ended 2 s past expiry by this clock: its energy went to the next request (whose option
    then over-filled at commit) while the first option was still placed validly, and its
    member was charged a lapse for energy it traded. Now it lasts until a block's time is
    past the expiry (or this clock is past it by more than block times may trail)."""
    _takes(e, "rival-1", 6000)
    expiry = _option(e.options["rival-1"]).expires_at
    e.clock[0] = expiry - 1
    e.submit(place(e.ids["rival-1"], e.options["rival-1"].option))  # sealed in time
    e.clock[0] = expiry + 3  # its block has not come yet
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # still held
    result = e.ledger.commit(e.chain.block(e.broadcaster.sent, timestamp=expiry))
    e.servicer.books.on_commit(result)
    assert result.codes == [Code.TX_VALIDATION_CODE_VALID]
    assert e.servicer.books._conduct.totals("rival", expiry + 3) == (6000, 0)  # traded


def test_a_seller_cancelling_what_an_option_holds_costs_the_option_no_lapse(
        e: TwoMembers) -> None:
    """A seller cancels the order another member's option trades with, before its
    place_order: the option can no longer be placed (a place_order trades all or nothing),
    through no fault of its member. Before, its hold stayed until expiry and was charged as a
    lapse, so any seller could put another member in bad standing (held to its share) at
    will. Now the hold ends in the cancel's block, uncharged."""
    [(_, order_id, _, _)] = e.servicer.books.open_orders()
    _takes(e, "rival-1", 6000)
    e.submit(cancel(e.ids["meter-1"], order_id))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert not e.servicer.books.holds(_option(e.options["rival-1"]).option_id)
    with pytest.raises(Aborted, match="over-fill"):  # dead, as said
        e.submit(place(e.ids["rival-1"], e.options["rival-1"].option))
    # The seller lists again; both members ask; the rival is in good standing: its first
    # option may take more than its share.
    e.accept("meter-1", e.request("meter-1", terms("meter-1", SELL, ASK, 6000)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    _takes(e, "meter-2", 1000)
    _lapse(e)
    _takes(e, "rival-2", 5000)


def test_a_member_cancelling_what_its_own_option_holds_is_charged_the_lapse(
        two_members: Path) -> None:
    """The rival's option takes its own cheap ask and all of the community's energy; just
    before expiry the rival cancels its own ask, which kills the whole option. That must cost
    it the lapse as letting it expire would (else it holds everything, renews, and its record
    stays clean), unlike a cancel by another member."""
    e = _two_members(two_members, sellers=("meter-1", "rival-3"))
    cheap = ASK - 10_000
    e.accept("rival-3", e.request("rival-3", terms("rival-3", SELL, cheap, 1000)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    [own] = [o for (_, o, price, _) in e.servicer.books.open_orders() if price == cheap]
    _takes(e, "rival-1", 6600)  # its first option, in good standing: 1,000 + 5,600
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # the community asks
    e.clock[0] = _option(e.options["rival-1"]).expires_at - 1
    e.submit(cancel(e.ids["rival-3"], own))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    # At once it counts as lapsed for its standing: its next first option gets its share.
    assert "let 6600 Wh lapse" in _exhausted(e, "rival-2", 5000)
    _lapse(e)  # and once a block is past the expiry, the lapse is on its record
    assert e.servicer.books._conduct.totals("rival", LAPSED) == (0, 6600)


def test_energy_another_endorser_placed_first_costs_the_option_holding_it_nothing(
        e: TwoMembers) -> None:
    """Each endorser holds only for its own options. The rival asks another endorser (here a
    second instance over the same replica) for the energy the community's option holds on
    this one, and places it first: the community's option is dead. Before, its hold stayed
    until expiry and was charged as a lapse, and its meter's cap stayed taken; now both end
    in that block, uncharged."""
    _takes(e, "meter-2", 6000)  # holds all 6,000 Wh here
    theirs = EndorserServicer(e.ledger, e.ids["endorser-1"], RecordingBroadcaster(),  # type: ignore[arg-type]
                              clock=lambda: e.clock[0])
    out = theirs.options(signed_request(e.ids["rival-1"], terms("rival-1", BUY, ASK, 6000),
                                        NOW), "")
    assert out.code == grpc.StatusCode.OK and out.response is not None, out.message
    theirs.SubmitTransaction(endorser_pb2.SubmitTransactionRequest(
        envelope=place(e.ids["rival-1"], out.response.option)), FakeContext())  # type: ignore[arg-type]
    result = e.ledger.commit(e.chain.block(theirs._broadcaster.sent, timestamp=NOW + 1))  # type: ignore[attr-defined]
    assert result.codes == [Code.TX_VALIDATION_CODE_VALID]
    e.servicer.books.on_commit(result)
    assert not e.servicer.books.holds(_option(e.options["meter-2"]).option_id)
    code, message, traded = _ask(e, "meter-2", 6000)  # its cap is free again: it may rest
    assert (code, traded) == (grpc.StatusCode.OK, 0), message
    _lapse(e)
    assert e.servicer.books._conduct.totals("community", LAPSED) == (0, 0)


def test_a_hold_the_clock_ended_is_charged_only_once_a_block_is_past_its_expiry(
        e: TwoMembers) -> None:
    """A locked pre-block re-proposed after round changes keeps its older time, so a block
    may place an option long after this clock passed its expiry. A hold the clock alone ended
    frees the energy but is charged as lapsed only once a block's time is past the expiry;
    placed before that, it counts as traded."""
    _takes(e, "rival-1", 3000)
    _takes(e, "rival-2", 3000)
    expiry = _option(e.options["rival-1"]).expires_at
    e.clock[0] = expiry - 1
    e.submit(place(e.ids["rival-1"], e.options["rival-1"].option))
    e.clock[0] = expiry + HOLD_GRACE_SECONDS + 30  # rounds changed; no block for a while
    assert _ask(e, "meter-2", 100)[0] == grpc.StatusCode.OK  # the energy is free again
    assert e.servicer.books._conduct.totals("rival", int(e.clock[0])) == (0, 0)  # not yet
    late = e.ledger.commit(e.chain.block(e.broadcaster.sent, timestamp=expiry))  # old time
    e.broadcaster.sent.clear()
    e.servicer.books.on_commit(late)
    assert late.codes == [Code.TX_VALIDATION_CODE_VALID]
    assert e.servicer.books._conduct.totals("rival", int(e.clock[0])) == (3000, 0)
    past = e.ledger.commit(e.chain.block([], timestamp=expiry + 1))  # rival-2's lapsed
    e.servicer.books.on_commit(past)
    assert e.servicer.books._conduct.totals("rival", int(e.clock[0])) == (3000, 3000)


def _theirs(e: TwoMembers) -> EndorserServicer:
    """The rival's own endorser over the same replica: its options hold nothing here."""
    return EndorserServicer(e.ledger, e.ids["rival-endorser"], RecordingBroadcaster(),  # type: ignore[arg-type]
                            clock=lambda: e.clock[0])


def _placed_by(e: TwoMembers, endorser: EndorserServicer, meter: str, wh: int) -> bytes:
    """`meter` buys `wh` through `endorser` and places it: the endorsed transaction."""
    out = endorser.options(signed_request(e.ids[meter], terms(meter, BUY, ASK, wh),
                                          int(e.clock[0])), "")
    assert out.code == grpc.StatusCode.OK and out.response is not None, out.message
    endorser.SubmitTransaction(endorser_pb2.SubmitTransactionRequest(
        envelope=place(e.ids[meter], out.response.option)), FakeContext())  # type: ignore[arg-type]
    return endorser._broadcaster.sent.pop()  # type: ignore[attr-defined,no-any-return]


def _sealed(e: TwoMembers, meter: str) -> bytes:
    """`meter`'s last option placed through this endorser, not yet in a block."""
    e.submit(place(e.ids[meter], e.options[meter].option))
    return e.broadcaster.sent.pop()


def _block(e: TwoMembers, raws: list[bytes], at: int) -> list[int]:
    result = e.ledger.commit(e.chain.block(raws, timestamp=at))
    e.servicer.books.on_commit(result)
    return result.codes


def _standing(e: TwoMembers, member: str = "rival") -> tuple[int, int]:
    return e.servicer.books._conduct.totals(member, int(e.clock[0]))


def test_on_a_chain_without_blocks_an_unplaced_option_still_costs_its_standing(
        e: TwoMembers) -> None:
    """With no block after an option's expiry (an idle chain: orderers cut no empty blocks)
    its lapse cannot be charged yet. Before, its member was then in good standing again and
    took all the slot's energy with a new first option, again and again."""
    _takes(e, "rival-1", 6000)
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # the community asks
    e.clock[0] = NOW + 30 + HOLD_GRACE_SECONDS + 1  # no block since
    assert "let 6000 Wh lapse" in _exhausted(e, "rival-2", 6000)


def test_a_late_block_placing_an_option_the_clock_released_charges_no_one(
        e: TwoMembers) -> None:
    """The clock ended rival-1's hold (3,000 Wh) and the energy went to rival-2's new option;
    then a block with an older time places rival-1's option after all. rival-2's option is
    dead through no cancel of the rival's: rival-1's trade is credited and nothing lapses."""
    _takes(e, "rival-1", 3000)
    expiry = _option(e.options["rival-1"]).expires_at
    e.clock[0] = expiry - 1
    first = _sealed(e, "rival-1")
    e.clock[0] = expiry + HOLD_GRACE_SECONDS + 2
    _takes(e, "rival-2", 6000)
    assert _block(e, [first], expiry) == [Code.TX_VALIDATION_CODE_VALID]
    _block(e, [], int(e.clock[0]))  # past both expiries
    assert _standing(e) == (3000, 0)


def test_an_option_made_void_and_then_placed_anyway_is_credited(e: TwoMembers) -> None:
    """Another endorser's buyer takes 3,000 of the 6,000 Wh two rival options hold; the
    later-expiring one loses its hold. rival-2 places that one anyway, before its sibling:
    valid on the ledger. Before, it was not credited and the sibling was charged."""
    _takes(e, "rival-1", 3000)
    e.clock[0] = NOW + 1
    _takes(e, "rival-2", 3000)
    assert _block(e, [_placed_by(e, _theirs(e), "meter-2", 3000)], NOW + 2) == [
        Code.TX_VALIDATION_CODE_VALID]
    books = e.servicer.books
    assert books.holds(_option(e.options["rival-1"]).option_id)
    assert not books.holds(_option(e.options["rival-2"]).option_id)
    assert _block(e, [_sealed(e, "rival-2")], NOW + 3) == [Code.TX_VALIDATION_CODE_VALID]
    _block(e, [], NOW + 40)
    assert _standing(e) == (3000, 0)


@pytest.mark.parametrize("foreign_first", [True, False])
def test_who_is_charged_does_not_depend_on_the_order_within_a_block(
        e: TwoMembers, foreign_first: bool) -> None:
    _takes(e, "rival-1", 3000)
    e.clock[0] = NOW + 1
    _takes(e, "rival-2", 3000)
    foreign, own = _placed_by(e, _theirs(e), "meter-2", 1000), _sealed(e, "rival-2")
    block = [foreign, own] if foreign_first else [own, foreign]
    assert _block(e, block, NOW + 2) == [Code.TX_VALIDATION_CODE_VALID] * 2
    _block(e, [], NOW + 40)
    assert _standing(e) == (3000, 0)  # rival-1's option, made void by a fill: not charged


def test_a_hold_survives_this_endorsers_clock_passing_gate_closure(e: TwoMembers) -> None:
    """Blocks timed before gate closure may still place options after this endorser's clock
    passed it: a fill of the maker must not end the others' holds as if the slot closed."""
    closure = SLOT - e.ledger.genesis.market.gate_closure_seconds
    e.clock[0] = closure - 5
    _takes(e, "rival-1", 3000)
    _takes(e, "rival-2", 3000)
    second, first = _sealed(e, "rival-2"), _sealed(e, "rival-1")
    e.clock[0] = closure + 1
    assert _block(e, [second], closure - 2) == [Code.TX_VALIDATION_CODE_VALID]
    assert _block(e, [first], closure - 1) == [Code.TX_VALIDATION_CODE_VALID]
    assert _standing(e) == (6000, 0)


def test_an_expired_option_is_a_lapse_even_if_the_block_that_shows_it_fills_its_maker(
        e: TwoMembers) -> None:
    _takes(e, "rival-1", 3000)
    expiry = _option(e.options["rival-1"]).expires_at
    e.clock[0] = expiry + 1
    assert _block(e, [_placed_by(e, _theirs(e), "meter-2", 4000)], expiry + 1) == [
        Code.TX_VALIDATION_CODE_VALID]
    assert _standing(e) == (0, 3000)


def test_an_option_unplaced_at_gate_closure_is_a_lapse(e: TwoMembers) -> None:
    """No block at or after gate closure can place an option: it expires there. Before, it
    expired 30 s after issue whatever the closure, and the block that closed the slot (its
    orders expired) ended the hold as if another member had taken the energy: uncharged, so a
    member could hold every slot's last half minute for free."""
    closure = SLOT - e.ledger.genesis.market.gate_closure_seconds
    e.clock[0] = closure - 25
    _takes(e, "rival-1", 6000)
    assert _option(e.options["rival-1"]).expires_at == closure - 1
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # the community asks
    _block(e, [], closure)  # its prologue expires the slot's orders
    assert not e.servicer.books.holds(_option(e.options["rival-1"]).option_id)
    assert _standing(e) == (0, 6000)


def test_a_member_voiding_its_own_option_through_another_endorser_is_charged(
        e: TwoMembers) -> None:
    """The rival's option here holds all 6,000 Wh; just before expiry a rival meter buys one
    lot of it through the rival's own endorser, which voids the option here. That must cost
    the lapse (else one lot per cycle keeps the slot held while its record stays clean)."""
    _takes(e, "rival-1", 6000)
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # the community asks
    expiry = _option(e.options["rival-1"]).expires_at
    e.clock[0] = expiry - 1
    assert _block(e, [_placed_by(e, _theirs(e), "rival-2", 1000)], expiry - 1) == [
        Code.TX_VALIDATION_CODE_VALID]
    assert "let 6000 Wh lapse" in _exhausted(e, "rival-3", 5000)
    _block(e, [], expiry + 1)
    assert _standing(e) == (0, 6000)


def _rival_option_reusing(e: TwoMembers, option_id: str, meter: str
                          ) -> envelope_pb2.SignedEnvelope:
    """`meter`'s PlaceOrder of an option the rival's endorser signed with `option_id`: a bid
    that rests below every ask (it trades nothing)."""
    forged = market_pb2.TradeOption(
        option_id=option_id, endorser="rival-endorser",
        terms=terms(meter, BUY, ASK - 10_000, 500), rest_wh=500, issued_at=NOW,
        expires_at=NOW + 30)
    return place(e.ids[meter], e.ids["rival-endorser"].sign_envelope(forged.SerializeToString()))


def test_another_endorsers_option_with_the_same_id_does_not_end_a_hold(
        e: TwoMembers) -> None:
    """Option ids are chosen by each endorser. The rival's endorser signs an option that
    reuses the id of the rival's option here (a bid of its own meter's) and places it:
    before, that ended the hold here without a lapse. Only this endorser's options count."""
    _takes(e, "rival-1", 6000)
    held = _option(e.options["rival-1"])
    envelope = _rival_option_reusing(e, held.option_id, "rival-2")
    assert _block(e, [endorsed(envelope, e.ids["rival-endorser"])], NOW + 1) == [
        Code.TX_VALIDATION_CODE_VALID]
    assert e.servicer.books.holds(held.option_id)
    assert _standing(e) == (0, 0)


def test_another_endorser_reusing_an_option_id_cannot_spend_the_victims_option(
        e: TwoMembers) -> None:
    """Tried as a hostile member would whose orderer (or relaying endorser) sees a meter's
    PlaceOrder in flight: its own endorser signs an option with the same id, its meter places
    it ahead in the same block. Before, the victim's order was then invalid ("option already
    used", for good); option ids are the issuing endorser's, so both orders stand."""
    _takes(e, "meter-2", 3000)
    victim = _option(e.options["meter-2"])
    hijack = _rival_option_reusing(e, victim.option_id, "rival-1")
    e.submit(place(e.ids["meter-2"], e.options["meter-2"].option))
    first = [endorsed(hijack, e.ids["rival-endorser"])]
    assert _block(e, first + e.broadcaster.sent, NOW + 1) == [
        Code.TX_VALIDATION_CODE_VALID, Code.TX_VALIDATION_CODE_VALID]
    e.broadcaster.sent.clear()
    assert not e.servicer.books.holds(victim.option_id)  # placed: its hold ended, uncharged
    assert _standing(e, "community") == (0, 0)


def test_a_rebuild_ends_open_holds_without_charging_anyone(e: TwoMembers) -> None:
    """A rebuild follows a failure in applying a block, so whether that block placed or
    voided an open option is not known: the holds end, credited if a block places them,
    never charged."""
    _takes(e, "rival-1", 6000)
    e.servicer.books.rebuild()
    assert not e.servicer.books.holds(_option(e.options["rival-1"]).option_id)
    _takes(e, "rival-2", 6000)  # its standing is good: a first option of any size
    _block(e, [], NOW + 31)  # both expired unplaced: only rival-2's, held after, is charged
    assert _standing(e) == (0, 6000)


def test_no_option_is_offered_too_late_to_reach_a_block(e: TwoMembers) -> None:
    closure = SLOT - e.ledger.genesis.market.gate_closure_seconds
    e.clock[0] = closure - 2
    code, message, _ = _ask(e, "rival-1", 1000)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "too late" in message, message


def test_trading_between_its_own_meters_does_not_restore_a_members_standing(
        two_members: Path) -> None:
    """The rival lets 6,000 Wh lapse, then its buyer takes 6,000 Wh from its own seller
    (rival-3) and places it: nothing moved between members. Before, that trade restored its
    standing, so a member could hold the others' energy, let it lapse, and wash its record
    with itself at will. Now only trades with another member's makers count."""
    e = _two_members(two_members, sellers=("meter-1", "rival-3"))
    _takes(e, "rival-1", 6000)
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # the community asks
    _lapse(e)  # the rival's 6,000 Wh lapse
    cheaper = ASK - 10_000
    e.accept("rival-3", e.request("rival-3", terms("rival-3", SELL, cheaper, 6000)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    code, message, traded = _ask(e, "rival-1", 6000, price=cheaper)  # its own seller only
    assert (code, traded) == (grpc.StatusCode.OK, 6000), message
    assert _places(e, "rival-1", LAPSED) == [Code.TX_VALIDATION_CODE_VALID]
    # Still in bad standing: its share of meter-1's 6,000 Wh (two members ask), no more.
    message = _exhausted(e, "rival-2", 6000)
    assert "let 6000 Wh lapse" in message and "traded 0 Wh" in message


def test_a_forged_place_order_neither_ends_a_hold_nor_hides_its_energy(e: TwoMembers) -> None:
    """The rival's meter signs a place_order whose option payload only names its own option
    (no endorser signature), and its own endorser gets it into a block, where it is invalid.
    Before, that ended the hold without re-reading the makers it held: their energy stayed
    out of the book for good. Now the hold lasts until the option expires, then the energy is
    back."""
    _takes(e, "rival-1", 6000)
    option_id = _option(e.options["rival-1"]).option_id
    forged = envelope_pb2.SignedEnvelope(
        payload=market_pb2.TradeOption(option_id=option_id).SerializeToString())
    e.broadcaster.sent.append(endorsed(e.ids["rival-1"].new_transaction(
        "place_order", market_pb2.PlaceOrder(option=forged), timestamp=NOW), e.ids["endorser-1"]))
    result = e.ledger.commit(e.chain.block(e.broadcaster.sent, timestamp=NOW))
    e.broadcaster.sent.clear()
    e.servicer.books.on_commit(result)
    assert result.codes != [Code.TX_VALIDATION_CODE_VALID]
    assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # still held
    _lapse(e)
    _takes(e, "meter-2", 3000)  # the energy is back (the rival's option lapsed)
    book = e.servicer.GetBook(endorser_pb2.GetBookRequest(slot_start=SLOT), None)  # type: ignore[arg-type]
    assert [(a.price, a.quantity_wh) for a in book.asks] == [(ASK, 3000)]


def test_a_relayed_request_is_charged_to_the_relaying_member(e: TwoMembers) -> None:
    """The rival's head-end system relays the community's meters' signed requests and drops
    the options: the lapses are the rival's, not the community's."""
    _takes(e, "meter-2", 6000, member="rival")
    assert _ask(e, "meter-2", 500)[0] == grpc.StatusCode.ABORTED  # the community asks
    _lapse(e)
    assert "let 6000 Wh lapse" in _exhausted(e, "rival-1", 6000)  # the rival's standing
    _takes(e, "meter-2", 6000)  # the community's own first option: all of it


def test_trades_a_member_relays_for_another_members_meter_earn_it_no_standing(
        e: TwoMembers) -> None:
    """The rival lets 3,000 Wh lapse, then relays a community meter's request and the
    community places it: a trade between two community meters. Before, it counted for the
    rival (its call got the option), so relaying others' trades washed its lapses. Now a
    trade counts only for the member whose own meter took it."""
    _takes(e, "rival-1", 3000)
    _takes(e, "meter-2", 500)  # the community asks (its 500 Wh lapse too)
    _lapse(e)
    _takes(e, "meter-2", 3000, member="rival")  # the rival's share: 6,000 / 2
    assert _places(e, "meter-2", LAPSED) == [Code.TX_VALIDATION_CODE_VALID]
    message = _exhausted(e, "rival-2", 3000)  # its share of the 3,000 Wh left: 1,500
    assert "let 3000 Wh lapse" in message and "traded 0 Wh" in message


def test_a_request_that_takes_nothing_is_not_asking(e: TwoMembers) -> None:
    # A bid below every ask holds nothing and lapses nothing: it does not shrink the shares.
    code, _, traded = _ask(e, "meter-2", 1000, price=ASK - 10_000)
    assert (code, traded) == (grpc.StatusCode.OK, 0)
    _takes(e, "rival-1", 3000)
    _takes(e, "rival-2", 3000)  # the rival is still the only member asking


def test_the_refusal_carries_a_retry_hint_and_the_same_request_may_come_again(
        e: TwoMembers) -> None:
    _takes(e, "rival-1", 3000)
    _takes(e, "meter-2", 1000)  # the community asks (and holds 1,000)
    request = signed_request(e.ids["rival-2"], terms("rival-2", BUY, ASK, 100), int(e.clock[0]))
    outcome = e.servicer.options(request, member="rival")
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and outcome.retry_after_ms > 0
    # In a batch it is answered the same way (the refused request was not "answered": its
    # nonce is not used up), and the book is as it was.
    assert e.servicer.options_in_batch(request, "rival").code == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    book = e.servicer.GetBook(endorser_pb2.GetBookRequest(slot_start=SLOT), None)  # type: ignore[arg-type]
    assert [(a.price, a.quantity_wh) for a in book.asks] == [(ASK, 2000)]
    # Once the rival's option is placed (its hold ends), the same signed request is answered.
    assert _places(e, "rival-1") == [Code.TX_VALIDATION_CODE_VALID]
    again = e.servicer.options(request, member="rival")
    assert again.code == grpc.StatusCode.OK and again.response is not None
    # Answered once: a third time it gets the same option (its answer may have been lost).
    third = e.servicer.options(request, member="rival")
    assert third.response is not None and third.response.option == again.response.option


def test_hold_conduct_forgets_after_its_window_and_stays_bounded() -> None:
    conduct = HoldConduct(window=600, bucket=60)
    conduct.lapsed("rival", 6000, now=1_000)
    conduct.traded("rival", 2000, now=1_100)
    assert conduct.totals("rival", now=1_200) == (2000, 6000)
    for t in range(1_200, 100_000, 7):  # a long run of events: at most 11 buckets kept
        conduct.traded("rival", 1, now=t)
    assert len(conduct._members["rival"]) <= 11
    assert conduct.totals("rival", now=200_000) == (0, 0)
    assert "rival" not in conduct._members


def _judged(e: TwoMembers, member: str = "rival") -> tuple[int, int]:
    """(traded, lapsed) Wh of `member` as the cache judges it, pending lapses included."""
    books = e.servicer.books
    traded, lapsed = books._conduct.totals(member, LAPSED)
    return traded, lapsed + books._pending_lapse.get(member, 0)


def _read_together(e: TwoMembers, *results: CommitResult) -> None:
    """The blocks reach the book cache as an endorser reading its committer's ledger gets
    them when they were committed since its last look: one result, the state as of the
    last."""
    run = CommitResult.joined(list(results))
    run.committed_state = e.ledger.store
    e.servicer.books.on_commit(run)


@pytest.mark.parametrize("together", [False, True])
def test_blocks_read_together_are_judged_as_block_by_block(two_members: Path,
                                                           together: bool) -> None:
    """An endorser reading its committer's ledger may see several blocks at once (after a
    busy moment, a read error, a restart): its option placed in the first (in time), a
    second block past the option's expiry. Credited as traded, as block by block; judged
    as one block at the last one's time, the placed option lapsed."""
    e = _two_members(two_members)
    _takes(e, "rival-1", 2000)
    expiry = _option(e.options["rival-1"]).expires_at
    e.submit(place(e.ids["rival-1"], e.options["rival-1"].option))
    placed = e.ledger.commit(e.chain.block(e.broadcaster.sent, timestamp=NOW))
    e.broadcaster.sent.clear()
    later = e.ledger.commit(e.chain.block([], timestamp=expiry + 1))
    if together:
        _read_together(e, placed, later)
    else:
        e.servicer.books.on_commit(placed)
        e.servicer.books.on_commit(later)
    assert _judged(e) == (2000, 0)
    assert e.servicer.books.height == e.ledger.height
    assert e.servicer.books.open_orders()[0][3] == 4000  # meter-1's ask, 2,000 Wh traded


@pytest.mark.parametrize("together", [False, True])
def test_blocks_read_together_judge_each_hold_against_its_own_blocks_remainder(
        two_members: Path, together: bool) -> None:
    """Two options hold 2,000 Wh each of meter-1's 6,000 Wh ask. In one block another
    endorser's option fills 2,000 of it (4,000 left: both holds still fit); in the next the
    first option is placed (2,000 left, the second still fits). Read together, the state is
    the second block's: judged by that remainder, the first block ended the second hold."""
    e = _two_members(two_members)
    [(_, maker_id, _, _)] = e.servicer.books.open_orders()
    _takes(e, "rival-1", 2000)
    _takes(e, "rival-2", 2000)
    second = _option(e.options["rival-2"]).option_id
    elsewhere = option(e.ids["rival-endorser"], terms("meter-2", BUY, ASK, 2000),
                       [(maker_id, "meter-1", ASK, 2000)])
    filled = e.ledger.commit(e.chain.block(
        [endorsed(place(e.ids["meter-2"], elsewhere), e.ids["rival-endorser"])],
        timestamp=NOW))
    if not together:
        e.servicer.books.on_commit(filled)
    e.submit(place(e.ids["rival-1"], e.options["rival-1"].option))
    placed = e.ledger.commit(e.chain.block(e.broadcaster.sent, timestamp=NOW))
    e.broadcaster.sent.clear()
    assert filled.codes == placed.codes == [Code.TX_VALIDATION_CODE_VALID]
    if together:
        _read_together(e, filled, placed)
    else:
        e.servicer.books.on_commit(placed)
    assert second in e.servicer.books._holds  # still placeable: 2,000 Wh left for it
    assert _judged(e) == (2000, 0)
