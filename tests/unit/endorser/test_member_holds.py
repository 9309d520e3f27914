"""Members share what options hold (book_cache.py): tried as a hostile member would, whose CA
enrols as many meters as it likes, each with a large deficit, that ask for options on all of a
slot's energy and never place them. The real servicer over a Ledger on a MemoryStore, as in
test_endorser_market, with a second member ("rival") beside the devnet's community."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_helpers import Aborted
from ledger_helpers import ChainBuilder, identity
from market_helpers import BUY, NOW, SELL, SLOT, history, signed_request, terms
from test_endorser_market import ASK, Endorser, RecordingBroadcaster, _option, accept_proof

from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.consortium import NodeSpec, OrgSpec, create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.storage import MemoryStore
from gridledger_endorser.hold_conduct import HoldConduct
from gridledger_endorser.service import EndorserServicer

RIVALS = ("rival-1", "rival-2", "rival-3")
FUNDS = 10**12


@pytest.fixture(scope="module")
def two_members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    topology = default_topology()
    topology.orgs.append(OrgSpec("rival", [*(NodeSpec(n, Role.METER) for n in RIVALS),
                                           NodeSpec("rival-admin", Role.ADMIN)]))
    balancing = sorted(topology.names(Role.SETTLEMENT))[0]
    funded = [*topology.names(Role.METER), *topology.names(Role.PLANT), balancing]
    directory = tmp_path_factory.mktemp("two-members")
    create_consortium(directory, topology, settlement={
        "balancing_account": balancing, "allocations": {n: FUNDS for n in funded}})
    return directory


@pytest.fixture()
def e(two_members: Path) -> Endorser:
    """meter-1 (community) rests an ask of 6,000 Wh; meter-2 (community) and every rival
    meter have a deficit of 6,000 Wh (allowance 6,600)."""
    genesis = Genesis.load(two_members / "genesis.json")
    ids = {n: identity(two_members, n) for n in ("endorser-1", "meter-1", "meter-2", *RIVALS)}
    ledger = Ledger(MemoryStore(), genesis, accept_proof)
    chain = ChainBuilder()
    endorser = ids["endorser-1"]
    txs = history(ids["meter-1"], endorser, SLOT, produced=2000, consumed=500)
    for buyer in ("meter-2", *RIVALS):
        txs += history(ids[buyer], endorser, SLOT, produced=0, consumed=1500)
    assert set(ledger.commit(chain.block(txs, timestamp=NOW)).codes) == {
        Code.TX_VALIDATION_CODE_VALID}
    clock = [float(NOW)]
    servicer = EndorserServicer(ledger, endorser, RecordingBroadcaster(),  # type: ignore[arg-type]
                                clock=lambda: clock[0])
    made = Endorser(servicer, ledger, chain, servicer._broadcaster, ids, clock)  # type: ignore[arg-type]
    made.accept("meter-1", made.request("meter-1", terms("meter-1", SELL, ASK, 6000)))
    assert made.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    return made


def _buy(e: Endorser, meter: str, wh: int, price: int = ASK) -> int:
    """Wh the option for `meter`'s buy trades (it holds that much until its block)."""
    option = _option(e.request(meter, terms(meter, BUY, price, wh)))
    return sum(t.quantity_wh for t in option.trades)


def _refused(e: Endorser, meter: str, wh: int) -> Aborted:
    with pytest.raises(Aborted) as err:
        e.request(meter, terms(meter, BUY, ASK, wh))
    return err.value


def test_a_member_shares_a_slot_once_another_asks_and_lapsing_costs_its_first_option(
        e: Endorser) -> None:
    # While only the rival asks, its meters may hold all the slot's 6,000 Wh.
    assert _buy(e, "rival-1", 3000) == 3000
    assert _buy(e, "rival-2", 3000) == 3000
    # The community asks: everything is held (its remainder would rest across it). From now
    # on the two share the slot's 6,000 Wh.
    assert _refused(e, "meter-2", 3000).code == grpc.StatusCode.ABORTED

    # The rival's options lapse unplaced. It asks again before the community does: no first
    # option of any size now (it let 6,000 Wh lapse and placed nothing), only its share.
    e.clock[0] = NOW + 40
    err = _refused(e, "rival-1", 6000)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 3000 Wh" in err.details and "shared by the 2 members" in err.details
    assert "let 6000 Wh lapse" in err.details and "placed 0 Wh" in err.details
    assert _buy(e, "rival-1", 2000) == 2000
    assert _buy(e, "rival-2", 1000) == 1000
    err = _refused(e, "rival-3", 100)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "hold 3000 Wh" in err.details
    # The community finds its share free.
    assert _buy(e, "meter-2", 3000) == 3000


def test_a_member_in_good_standing_may_clear_a_thin_book_with_one_option(e: Endorser) -> None:
    # The community asked first; the rival's first option may still take all 6,000 Wh.
    assert _buy(e, "meter-2", 100, price=ASK - 10_000) == 0  # rests below the ask: asked
    assert _buy(e, "rival-1", 6000) == 6000
    e.clock[0] = NOW + 40  # it lapses
    assert _refused(e, "rival-1", 6000).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Placing orders on the ledger restores its standing: a resting bid of 6,000 Wh.
    e.accept("rival-2", e.request("rival-2", terms("rival-2", BUY, ASK - 10_000, 6000)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    assert _buy(e, "rival-3", 6000) == 6000


def test_the_refusal_carries_a_retry_hint_and_the_same_request_may_come_again(
        e: Endorser) -> None:
    held = e.request("rival-1", terms("rival-1", BUY, ASK, 3000))
    assert _buy(e, "meter-2", 1000, price=ASK - 10_000) == 0  # asks (rests below the ask)
    request = signed_request(e.ids["rival-2"], terms("rival-2", BUY, ASK, 100), int(e.clock[0]))
    outcome = e.servicer.options(request, member="rival")
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and outcome.retry_after_ms > 0
    # In a batch it is answered the same way (the refused request was not "answered": its
    # nonce is not used up), and the book is as it was.
    assert e.servicer.options_in_batch(request, "rival").code == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    book = e.servicer.GetBook(endorser_pb2.GetBookRequest(slot_start=SLOT), None)  # type: ignore[arg-type]
    assert [(a.price, a.quantity_wh) for a in book.asks] == [(ASK, 3000)]
    # Once the rival's option is placed (its hold ends), the same signed request is answered.
    e.accept("rival-1", held)
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    again = e.servicer.options(request, member="rival")
    assert again.code == grpc.StatusCode.OK and again.response is not None
    # Answered once: a third time it is a replay.
    assert e.servicer.options(request, member="rival").code == grpc.StatusCode.ALREADY_EXISTS


def test_hold_conduct_forgets_after_its_window_and_stays_bounded() -> None:
    conduct = HoldConduct(window=600, bucket=60)
    conduct.lapsed("rival", 6000, now=1_000)
    conduct.placed("rival", 2000, now=1_100)
    assert conduct.totals("rival", now=1_200) == (2000, 6000)
    for t in range(1_200, 100_000, 7):  # a long run of events: at most 11 buckets kept
        conduct.placed("rival", 1, now=t)
    assert len(conduct._members["rival"]) <= 11
    assert conduct.totals("rival", now=200_000) == (0, 0)
    assert "rival" not in conduct._members
