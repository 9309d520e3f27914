"""Two members taking turns to hold a third member's energy (book_cache.py, VOID_BUDGET),
tried as hostile members would. The holder's option takes the voider's small cheap ask
together with the third member's energy; the voider cancels its ask before the option
expires, which voids the option "by another member's doing", so the holder is not charged
and asks again at once with a clean record, as often as it likes: the third member's energy
stays held and nobody else can take it. Now a void counts against the member that voided
its own order under another member's option holding a third member's energy; beyond the
budget this endorser no longer combines that member's orders with others' in one option."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from market_helpers import BUY, SELL, cancel, signed_request, terms
from test_endorser_market import ASK, _option
from test_member_holds import FUNDS, RIVALS, TwoMembers, _ask, _takes, _two_members

from gridledger_core.consortium import NodeSpec, OrgSpec, create_consortium, default_topology
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_endorser.book_cache import VOID_BUDGET

BROKERS = ("broker-1", "broker-2")
CHEAP = ASK - 10_000


@pytest.fixture(scope="module")
def three_members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The devnet's community, a rival (the holder) and a broker (the voider)."""
    topology = default_topology()
    topology.orgs.append(OrgSpec("rival", [*(NodeSpec(n, Role.METER) for n in RIVALS),
                                           NodeSpec("rival-admin", Role.ADMIN),
                                           NodeSpec("rival-endorser", Role.ENDORSER)]))
    topology.orgs.append(OrgSpec("broker", [*(NodeSpec(n, Role.METER) for n in BROKERS),
                                            NodeSpec("broker-admin", Role.ADMIN)]))
    balancing = sorted(topology.names(Role.SETTLEMENT))[0]
    funded = [*topology.names(Role.METER), *topology.names(Role.PLANT), balancing]
    directory = tmp_path_factory.mktemp("three-members")
    create_consortium(directory, topology, settlement={
        "balancing_account": balancing, "allocations": {n: FUNDS for n in funded}})
    return directory


@pytest.fixture()
def e(three_members: Path) -> TwoMembers:
    """meter-1 (community) rests an ask of 6,000 Wh at ASK; the brokers have a surplus, the
    rival's meters a deficit (allowance 6,600 Wh)."""
    return _two_members(three_members, sellers=("meter-1", *BROKERS), more_meters=BROKERS)


def _cheap_ask(e: TwoMembers, broker: str = "broker-1", wh: int = 600) -> str:
    """`broker` rests a small ask below meter-1's; its order id."""
    e.accept(broker, e.request(broker, terms(broker, SELL, CHEAP, wh)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    [order_id] = [o for (_, o, price, _) in e.servicer.books.open_orders() if price == CHEAP]
    return order_id


def _cancels(e: TwoMembers, broker: str, order_id: str) -> None:
    e.submit(cancel(e.ids[broker], order_id))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]


def _voiders(e: TwoMembers) -> set[str]:
    return e.servicer.books._conduct.voiders(VOID_BUDGET, int(e.clock[0]))


def test_two_members_cannot_keep_a_third_members_energy_held_by_taking_turns(
        e: TwoMembers) -> None:
    # A cancel under an option holding only the voider's energy harms nobody: not counted.
    order_id = _cheap_ask(e)
    _takes(e, "rival-1", 600)
    _cancels(e, "broker-1", order_id)
    assert e.servicer.books._conduct.voiders(0, int(e.clock[0])) == set()

    # The attack: the rival's option takes the broker's 600 Wh and the community's 6,000;
    # the broker cancels before it expires; the rival asks again with a clean record.
    for _ in range(VOID_BUDGET + 1):
        assert _voiders(e) == set()
        order_id = _cheap_ask(e)
        _takes(e, "rival-1", 6600)
        held = _option(e.options["rival-1"])
        assert {t.maker for t in held.trades} == {"broker-1", "meter-1"}
        _cancels(e, "broker-1", order_id)
        assert not e.servicer.books.holds(held.option_id)  # void, uncharged to the rival
    assert _voiders(e) == {"broker"}
    assert e.servicer.books._conduct.totals("rival", int(e.clock[0])) == (0, 0)

    # Beyond the budget the broker's orders are not combined with others' energy: the
    # rival's 6,600 would need them (its 600 Wh rest would cross the broker's ask).
    order_id = _cheap_ask(e, "broker-2")
    refused = e.servicer.options(signed_request(
        e.ids["rival-1"], terms("rival-1", BUY, ASK, 6600), int(e.clock[0])), "")
    assert refused.code == grpc.StatusCode.ABORTED
    assert "broker voided other members' options more than 3 times" in refused.message
    assert "6000 Wh can be taken: request at most that" in refused.message
    assert refused.retry_after_ms == 60_000  # a bucket of the count may leave the window
    # What the community's energy fills alone is taken passing over the broker's ask; the
    # broker's cancel cannot void that option: the rival places it or its lapse is charged.
    _takes(e, "rival-1", 6000)
    held = _option(e.options["rival-1"])
    assert {t.maker for t in held.trades} == {"meter-1"}
    _cancels(e, "broker-2", order_id)
    assert e.servicer.books.holds(held.option_id)
    # The broker's orders alone are still traded (no third member's energy in the option).
    order_id = _cheap_ask(e, "broker-2")
    code, message, traded = _ask(e, "meter-2", 600, price=CHEAP)
    assert (code, traded) == (grpc.StatusCode.OK, 600), message

