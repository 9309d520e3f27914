"""Which orderer the broadcaster tries first (`orderer_choice.py`): the one that last
acknowledged in time; struck orderers (failed, or late) after the others for a cool-down
that doubles; busy ones after the free ones. Pure, with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_endorser.orderer_choice import COOLDOWN_FIRST, COOLDOWN_MAX, OrdererChoice


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_lead_goes_first_and_the_ring_follows() -> None:
    choice = OrdererChoice(4, Clock())
    assert choice.order() == [0, 1, 2, 3]
    choice.in_time(2)
    assert choice.order() == [2, 3, 0, 1]


def test_a_struck_orderer_loses_the_lead_and_waits_out_its_cooldown_after_the_others(
) -> None:
    clock = Clock()
    choice = OrdererChoice(3, clock)
    assert choice.strike(0) == COOLDOWN_FIRST
    assert choice.order() == [1, 2, 0]
    clock.now += COOLDOWN_FIRST
    assert choice.order() == [1, 2, 0]  # ready again, but the lead moved on


def test_strikes_double_the_cooldown_up_to_its_cap_and_are_forgotten_after_a_clean_minute(
) -> None:
    clock = Clock()
    choice = OrdererChoice(2, clock)
    seconds = [choice.strike(1) for _ in range(10)]
    assert seconds[:4] == [COOLDOWN_FIRST, 2 * COOLDOWN_FIRST, 4 * COOLDOWN_FIRST,
                           8 * COOLDOWN_FIRST]
    assert max(seconds) == COOLDOWN_MAX
    clock.now += COOLDOWN_MAX
    choice.in_time(1)  # in time, but struck within the last minute: no lead yet
    assert choice.order() == [0, 1]
    clock.now += COOLDOWN_MAX + 1
    choice.in_time(1)
    assert choice.order() == [1, 0]
    assert choice.strike(1) == COOLDOWN_FIRST


def test_an_answer_in_time_between_late_ones_does_not_win_the_lead_back() -> None:
    """Tried as a hostile member would: its orderer alternates a quick answer and one held
    until just inside the timeout. Before, the quick one made it lead again with its strikes
    wiped, so it held every second group for a 1 s cool-down each time."""
    clock = Clock()
    choice = OrdererChoice(2, clock)
    choice.in_time(0)
    choice.strike(0)  # held one
    cooldowns = []
    for _ in range(5):
        clock.now += 5.0
        choice.in_time(0)  # a quick one, when it was tried
        assert choice.order() == [1, 0]
        cooldowns.append(choice.strike(0))  # and the next held one
    assert cooldowns == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_cooling_orderers_come_after_ready_ones_soonest_first_and_busy_ones_last() -> None:
    """A group leaves alongside another only when that call is out too long already: it
    goes anywhere else first, cooling orderers included."""
    clock = Clock()
    choice = OrdererChoice(4, clock)
    choice.strike(1)
    choice.strike(1)  # orderer 1 cools down until 2.0
    clock.now += 0.5
    choice.strike(3)  # orderer 3 until 1.5
    assert choice.order(busy={0}) == [2, 3, 1, 0]
    assert choice.order(busy={2}) == [0, 3, 1, 2]


def test_an_orderer_recovering_while_the_order_is_made_is_still_in_it() -> None:
    class Ticking(Clock):
        def __call__(self) -> float:
            self.now += 0.5  # a strike at 0.5 cools until 1.5: the next order reads 1.0, 1.5
            return self.now

    clock = Ticking()
    choice = OrdererChoice(1, clock)
    choice.strike(0)  # 1 s from the strike's reading
    for _ in range(6):
        assert choice.order() == [0]


def test_strikes_long_past_are_forgotten() -> None:
    clock = Clock()
    choice = OrdererChoice(2, clock)
    assert [choice.strike(1) for _ in range(3)] == [1.0, 2.0, 4.0]
    clock.now += 4.0 + COOLDOWN_MAX + 1  # a clean spell after the last cool-down
    assert choice.strike(1) == COOLDOWN_FIRST


@settings(deadline=None)
@given(count=st.integers(1, 6),
       steps=st.lists(st.tuples(st.sampled_from(["in_time", "strike", "tick"]),
                                st.integers(0, 5), st.floats(0, 100)), max_size=40),
       busy=st.sets(st.integers(0, 5)))
def test_every_orderer_is_tried_once_free_ones_first_ready_before_cooling(
        count: int, steps: list[tuple[str, int, float]], busy: set[int]) -> None:
    clock = Clock()
    choice = OrdererChoice(count, clock)
    for action, index, seconds in steps:
        if action == "tick":
            clock.now += seconds
        else:
            getattr(choice, action)(index % count)
    order = choice.order(busy)
    assert sorted(order) == list(range(count))
    free = [i for i in order if i not in busy]
    assert order[:len(free)] == free  # the busy ones last
    for group in (free, [i for i in order if i in busy]):
        ready = [i for i in group if not choice.cooling(i)]
        assert group[:len(ready)] == ready
    if choice.lead not in busy and not choice.cooling(choice.lead):
        assert order[0] == choice.lead


def test_a_strike_hands_the_lead_to_a_clean_orderer_not_merely_the_next() -> None:
    """Tried as a hostile member would: its orderer (1) was struck; when the honest lead
    before it (0) is struck once, the lead went to it for coming next in the ring."""
    clock = Clock()
    choice = OrdererChoice(3, clock)
    choice.strike(1)
    clock.now += 10
    choice.in_time(0)
    choice.strike(0)
    assert choice.order()[0] == 2


def test_with_every_orderer_struck_the_lead_goes_to_the_fewest_strikes() -> None:
    clock = Clock()
    choice = OrdererChoice(3, clock)
    choice.strike(1)
    choice.strike(1)
    choice.strike(2)
    clock.now += 10
    choice.strike(0)  # the lead: 1 and 2 were struck within the minute
    assert choice.lead == 2
    choice.in_time(1)  # more strikes than the lead: no lead
    assert choice.lead == 2
