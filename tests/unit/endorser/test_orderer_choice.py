"""Which orderer the broadcaster tries first (`orderer_choice.py`): the one that last
acknowledged in time; struck orderers (failed, or late) after the others for a cool-down
that doubles; busy ones after the free ones. Pure, with a fake clock."""

from __future__ import annotations

from hypothesis import given
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


def test_a_struck_orderer_waits_out_its_cooldown_after_the_others() -> None:
    clock = Clock()
    choice = OrdererChoice(3, clock)
    assert choice.strike(0) == COOLDOWN_FIRST
    assert choice.order() == [1, 2, 0]  # the lead itself, while it cools down
    clock.now += COOLDOWN_FIRST
    assert choice.order() == [0, 1, 2]


def test_strikes_in_a_row_double_the_cooldown_up_to_its_cap_and_an_answer_in_time_ends_them(
) -> None:
    choice = OrdererChoice(2, Clock())
    seconds = [choice.strike(1) for _ in range(10)]
    assert seconds[:4] == [COOLDOWN_FIRST, 2 * COOLDOWN_FIRST, 4 * COOLDOWN_FIRST,
                           8 * COOLDOWN_FIRST]
    assert max(seconds) == COOLDOWN_MAX
    choice.in_time(1)
    assert choice.order() == [1, 0]
    assert choice.strike(1) == COOLDOWN_FIRST


def test_busy_orderers_come_after_free_ones_and_cooling_ones_last_soonest_first() -> None:
    clock = Clock()
    choice = OrdererChoice(4, clock)
    choice.strike(1)
    choice.strike(1)  # 2 s
    clock.now += 0.5
    choice.strike(3)  # until 1.5; orderer 1 cools down until 2.0
    assert choice.order(busy={0}) == [2, 0, 3, 1]


@given(count=st.integers(1, 6),
       steps=st.lists(st.tuples(st.sampled_from(["in_time", "strike", "tick"]),
                                st.integers(0, 5), st.floats(0, 100)), max_size=40),
       busy=st.sets(st.integers(0, 5)))
def test_every_orderer_is_always_tried_once_free_and_ready_ones_first(
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
    ready = [i for i in order if i not in busy and not choice.cooling(i)]
    assert order[:len(ready)] == ready
