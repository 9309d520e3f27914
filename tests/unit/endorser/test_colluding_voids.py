"""Members taking turns to hold a third member's energy (book_cache.py, VOID_BUDGET), tried
as hostile members would. The holder's option takes the voider's small cheap ask together
with the third member's energy; before the option expires the voider cancels its ask (or a
colluder fills one lot of it through another endorser), which voids the option "by another
member's doing": before, the holder was never charged and asked again at once with a clean
record, as often as it liked, so the third member's energy stayed held and nobody was
charged. Now such voids are counted per holder, and beyond the budget the holder, whom they
serve, is charged the lapse. A fill that races an option for the one maker it holds harms no
third member and is not counted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from market_helpers import SELL, cancel, terms
from test_endorser_market import ASK, _option
from test_member_holds import (
    TwoMembers,
    _ask,
    _block,
    _exhausted,
    _placed_by,
    _takes,
    _theirs,
    _two_members,
    funded_consortium,
)

from gridledger_core.consortium import NodeSpec, OrgSpec
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_endorser.book_cache import VOID_BUDGET
from gridledger_endorser.hold_conduct import BUCKET_SECONDS, WINDOW_SECONDS, HoldConduct

BROKERS = ("broker-1", "broker-2")
TRADER = "trader-1"  # a fourth member's meter: the colluder filling through another endorser
CHEAP = ASK - 10_000


@pytest.fixture(scope="module")
def three_members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The devnet's community (the third member), a rival (the holder), a broker (the
    voider) and a trader (a colluder)."""
    return funded_consortium(
        tmp_path_factory.mktemp("three-members"),
        OrgSpec("broker", [*(NodeSpec(n, Role.METER) for n in BROKERS),
                           NodeSpec("broker-admin", Role.ADMIN)]),
        OrgSpec("trader", [NodeSpec(TRADER, Role.METER), NodeSpec("trader-admin", Role.ADMIN)]))


@pytest.fixture()
def e(three_members: Path) -> TwoMembers:
    """meter-1 (community) rests an ask of 6,000 Wh at ASK; the brokers have a surplus, the
    rival's meters a deficit (allowance 6,600 Wh)."""
    return _two_members(three_members, sellers=("meter-1", *BROKERS),
                        more_meters=(*BROKERS, TRADER))


def _cheap_ask(e: TwoMembers, broker: str = "broker-1") -> str:
    """`broker` rests 600 Wh below meter-1's ask; its order id."""
    before = {o for (_, o, _, _) in e.servicer.books.open_orders()}
    e.accept(broker, e.request(broker, terms(broker, SELL, CHEAP, 600)))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    [order_id] = [o for (_, o, price, _) in e.servicer.books.open_orders()
                  if price == CHEAP and o not in before]
    return order_id


def _holds_both(e: TwoMembers) -> str:
    """The rival's option takes the broker's 600 Wh and the community's 6,000; its id."""
    _takes(e, "rival-1", 6600)
    held = _option(e.options["rival-1"])
    assert {t.maker for t in held.trades} == {"broker-1", "meter-1"}
    return held.option_id


def _cancel_void(e: TwoMembers, order_id: str) -> None:
    e.submit(cancel(e.ids["broker-1"], order_id))
    assert e.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]


def _fill_void(e: TwoMembers, order_id: str) -> None:
    """A colluder (a fourth member) buys one lot of the broker's ask through another
    endorser: the option holding it here is void."""
    assert _block(e, [_placed_by(e, _theirs(e), TRADER, 100)], int(e.clock[0])) == [
        Code.TX_VALIDATION_CODE_VALID]


Void = Callable[[TwoMembers, str], None]  # ends, by another member's doing, an option's hold


def _pending_lapse(e: TwoMembers) -> int:
    return e.servicer.books._pending_lapse.get("rival", 0)


@pytest.mark.parametrize("void", [_cancel_void, _fill_void])
def test_members_taking_turns_cannot_keep_a_third_members_energy_held_uncharged(
        e: TwoMembers, void: Void) -> None:
    for turn in range(VOID_BUDGET + 1):
        order_id = _cheap_ask(e)
        option_id = _holds_both(e)
        if not turn:  # the community asks too (all is held): a holder in bad standing
            assert _ask(e, "meter-2", 1000)[0] == grpc.StatusCode.ABORTED  # gets its share
        void(e, order_id)
        assert not e.servicer.books.holds(option_id)
        if turn < VOID_BUDGET:  # another member's doing: free, within the budget
            assert _pending_lapse(e) == 0
    # Beyond it the void is the holder's lapse: its next first option gets only its share.
    assert _pending_lapse(e) == 6600
    assert "let 6600 Wh lapse" in _exhausted(e, "rival-2", 6000)


@pytest.mark.parametrize("void", [_cancel_void, _fill_void])
def test_a_void_of_an_option_holding_no_third_members_energy_is_not_counted(
        e: TwoMembers, void: Void) -> None:
    """A seller cancelling the order an option holds with nobody else's energy, or another
    endorser's buyer racing the option for it, harms no third member: that stays free
    however often (the holder is the victim there, not served)."""
    for _ in range(VOID_BUDGET + 2):
        order_id = _cheap_ask(e)
        _takes(e, "rival-1", 600)  # the broker's 600 Wh only
        void(e, order_id)
    assert _pending_lapse(e) == 0
    _takes(e, "rival-1", 6000)  # in good standing: its first option takes all it asks


def test_voids_are_forgotten_after_the_window() -> None:
    conduct = HoldConduct()
    for _ in range(VOID_BUDGET):
        assert conduct.voided("rival", 1_000) <= VOID_BUDGET
    assert conduct.voided("rival", 1_000 + WINDOW_SECONDS + BUCKET_SECONDS) == 1
