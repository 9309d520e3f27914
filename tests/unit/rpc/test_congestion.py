"""Client-side congestion control: the AIMD window of calls in flight, as a pure rule
(injected clock) and as asyncio waiting."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.rpc.congestion import (
    CUBIC_C,
    DECREASE,
    SLOW_ANSWER,
    AsyncCallWindow,
    CallWindow,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def window(initial: float = 4, clock: Clock | None = None, ceiling: float = 1024
           ) -> CallWindow:
    return CallWindow(initial=initial, ceiling=ceiling, clock=clock or Clock())


def test_slow_start_doubles_the_window_each_round_trip() -> None:
    w = window(initial=4)
    for expected in (8, 16, 32):
        sent = [w.start() for _ in range(int(w.window))]
        assert None not in sent and w.start() is None  # full
        for _ in sent:
            w.admitted()
        assert w.window == expected


def test_one_burst_of_refusals_cuts_the_window_once_then_it_grows_by_one_per_round_trip(
) -> None:
    clock = Clock()
    w = window(initial=16, clock=clock)
    sent = [w.start() for _ in range(16)]
    clock.now += 0.01
    for at in sent:
        assert at is not None
        w.refused(at)
    assert w.window == pytest.approx(16 * DECREASE)  # not 16 * DECREASE**16
    clock.now += 0.01
    late = w.start()  # sent after the cut: its refusal is a new signal
    assert late is not None
    w.refused(late)
    assert w.window == pytest.approx(16 * DECREASE ** 2)
    before = w.window
    for _ in range(3):  # three round trips of admitted calls
        calls = [w.start() for _ in range(int(w.window))]
        for _ in calls:
            w.admitted()
    assert before + 2.5 < w.window < before + 3.5  # + about 1 per round trip, no doubling


def test_after_a_cut_the_window_is_won_back_within_seconds_not_minutes() -> None:
    """Round trips of 0.5 s, a window of 200 calls cut once: Reno's +1 per round trip took
    60 round trips (30 s, a whole overload phase) to win back the 60 calls; along CUBIC's
    curve the window is back after K = cbrt(200 * 0.3 / 0.4) = 5.3 s, then probes beyond
    it slowly."""
    clock = Clock()
    w = window(initial=200, clock=clock)
    sent = [w.start() for _ in range(200)]
    clock.now += 0.5
    assert sent[0] is not None
    w.refused(sent[0])
    for _ in sent[1:]:
        w.ended()
    assert w.window == pytest.approx(200 * DECREASE)
    k = (200 * (1 - DECREASE) / CUBIC_C) ** (1 / 3)
    trips = 0
    while w.window < 199:  # full windows of admitted calls, a round trip each
        calls = [w.start() for _ in range(int(w.window))]
        clock.now += 0.5
        for _ in calls:
            w.admitted()
        trips += 1
    assert trips * 0.5 <= k + 1.0  # Reno: 30 s
    for _ in range(4):  # near the old window it grows slowly: a plateau, not a jump
        calls = [w.start() for _ in range(int(w.window))]
        clock.now += 0.5
        for _ in calls:
            w.admitted()
    assert w.window < 215


def test_long_after_a_cut_the_window_grows_at_most_half_again_per_round_trip() -> None:
    """Far past the old size the curve is steep; following it per call doubled the window
    every round trip (70 -> 140 -> 280 ...), slow start again. RFC 9438 caps the target at
    1.5 x the window."""
    clock = Clock()
    w = window(initial=100, clock=clock)
    at = w.start()
    assert at is not None
    clock.now += 0.5
    w.refused(at)
    clock.now += 60  # a minute later: the curve is far above the window
    for _ in range(3):
        before = w.window
        calls = [w.start() for _ in range(int(w.window))]
        for _ in calls:
            w.admitted()
        assert before + 1 <= w.window <= 1.5 * before + 1


def test_the_window_never_falls_below_its_floor() -> None:
    clock = Clock()
    w = window(initial=2, clock=clock)
    for _ in range(10):
        at = w.start()
        assert at is not None
        clock.now += 1
        w.refused(at)
    assert w.window == 1 and w.start() is not None


def test_other_outcomes_free_the_slot_without_moving_the_window() -> None:
    w = window(initial=2)
    assert w.start() is not None and w.start() is not None and w.start() is None
    w.ended()
    assert w.window == 2 and w.start() is not None


def test_an_outcome_for_a_call_never_started_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        window().admitted()
    with pytest.raises(ValueError):
        CallWindow(initial=0.5, floor=1)
    with pytest.raises(ValueError):
        CallWindow(slow_after=0)  # every answer would cut the window


@given(st.lists(st.tuples(st.sampled_from(["start", "ok", "refused", "ended", "tick"]),
                          st.integers(0, 2_000)), max_size=300))
def test_the_window_stays_within_its_bounds_and_never_over_commits(
        steps: list[tuple[str, int]]) -> None:
    clock = Clock()
    w = window(initial=4, clock=clock, ceiling=64)
    in_flight: list[float] = []
    for op, value in steps:
        if op == "start":
            at = w.start()
            if at is not None:
                assert len(in_flight) < w.window  # a slot was free
                in_flight.append(at)
        elif op == "tick":
            clock.now += value / 1000
        elif in_flight:
            at = in_flight.pop(value % len(in_flight))
            if op == "ok":
                w.admitted()
            elif op == "refused":
                w.refused(at)
            else:
                w.ended()
        assert 1 <= w.window <= 64
        assert w.in_flight == len(in_flight)


def test_a_window_that_is_not_the_limit_does_not_grow() -> None:
    """One call at a time, admitted a thousand times: growing would store up a burst."""
    w = window(initial=8)
    for _ in range(1_000):
        assert w.start() is not None
        w.admitted()
    assert w.window == 8


def test_an_answer_slower_than_slow_after_cuts_the_window_though_the_call_was_admitted(
) -> None:
    """Calls queued inside gRPC ahead of the endorser's admission control are admitted in
    the end, late: slow start, counting only refusals, doubled the window into that queue.
    A slow answer is a congestion signal (one per round trip, as refusals), and ends slow
    start."""
    clock = Clock()
    w = window(initial=16, clock=clock)
    sent = [w.start() for _ in range(16)]
    clock.now += SLOW_ANSWER + 0.5
    for at in sent:
        assert at is not None
        w.admitted(at)
    assert w.in_flight == 0
    assert w.window == pytest.approx(16 * DECREASE)  # one cut for the round trip's answers
    before = w.window
    calls = [w.start() for _ in range(int(w.window))]
    clock.now += 0.1  # prompt answers again: growth, but no longer doubling
    for at in calls:
        w.admitted(at)
    assert before < w.window < 1.5 * before


def test_answers_within_slow_after_grow_the_window_as_before() -> None:
    clock = Clock()
    w = window(initial=4, clock=clock)
    sent = [w.start() for _ in range(4)]
    clock.now += SLOW_ANSWER * 0.9
    for at in sent:
        w.admitted(at)
    assert w.window == 8  # slow start: doubled
    off = CallWindow(initial=4, slow_after=float("inf"), clock=clock)
    sent = [off.start() for _ in range(4)]
    clock.now += 3600  # judged by nothing but refusals
    for at in sent:
        off.admitted(at)
    assert off.window == 8


# -- asyncio --------------------------------------------------------------------------------

def test_the_asyncio_window_judges_each_admitted_answer_by_its_own_send_time() -> None:
    async def scenario() -> None:
        clock = Clock()
        w = AsyncCallWindow(window(initial=2, clock=clock))
        async with w.call() as call:
            call.admitted()
        assert w.state.window == 3  # prompt
        async with w.call() as call:
            clock.now += SLOW_ANSWER + 0.1
            call.admitted()
        assert w.state.window == pytest.approx(3 * DECREASE) and w.state.in_flight == 0

    asyncio.run(scenario())


def test_waiters_take_slots_first_come_first_served_as_calls_end() -> None:
    async def scenario() -> list[int]:
        w = AsyncCallWindow(window(initial=2))
        order: list[int] = []
        release = asyncio.Event()

        async def hold() -> None:
            async with w.call():
                await release.wait()

        async def call(i: int) -> None:
            async with w.call():
                order.append(i)

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(call(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert order == []  # the window is full
        release.set()
        await asyncio.gather(*holders, *tasks)
        assert w.state.in_flight == 0
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_a_slot_is_given_back_however_the_block_is_left() -> None:
    async def scenario() -> None:
        w = AsyncCallWindow(window(initial=4))
        with pytest.raises(RuntimeError):
            async with w.call():
                raise RuntimeError("a bug in the caller")
        async with w.call() as call:
            call.refused()
        assert w.state.in_flight == 0 and w.state.window == pytest.approx(4 * DECREASE)

    asyncio.run(scenario())


@pytest.mark.parametrize("woken", [False, True], ids=["while queued", "once woken"])
def test_a_cancelled_waiter_passes_the_slot_on(woken: bool) -> None:
    """Cancelled while queued (its future is cancelled at once, its task runs later), or
    after it was handed the freed slot but before it ran: the next waiter gets the slot."""
    async def scenario() -> None:
        w = AsyncCallWindow(window(initial=1))
        got: list[str] = []

        async def wait(name: str) -> None:
            async with w.call():
                got.append(name)

        async with w.call():
            first, second = asyncio.create_task(wait("first")), asyncio.create_task(
                wait("second"))
            await asyncio.sleep(0)  # both queued
            if not woken:
                first.cancel()
        if woken:  # leaving the block handed `first` the slot; it has not run yet
            first.cancel()
        await asyncio.wait_for(second, timeout=5)
        with pytest.raises(asyncio.CancelledError):
            await first
        assert got == ["second"] and w.state.in_flight == 0

    asyncio.run(scenario())


def test_many_calls_with_random_outcomes_all_finish() -> None:
    """Liveness: whatever the mix of admissions, refusals and other endings, every call
    gets a slot eventually and no slot leaks."""
    async def scenario() -> None:
        w = AsyncCallWindow(CallWindow())
        finished = 0

        async def job(seed: int) -> None:
            nonlocal finished
            rng = random.Random(seed)  # its own draws, whatever the interleaving
            for _ in range(3):
                async with w.call() as call:
                    for _ in range(rng.randrange(4)):
                        await asyncio.sleep(0)
                    draw = rng.random()
                    if draw < 0.2:
                        call.refused()
                        continue
                    if draw < 0.9:
                        call.admitted()
                break
            finished += 1

        await asyncio.wait_for(asyncio.gather(*(job(i) for i in range(500))), timeout=60)
        assert finished == 500 and w.state.in_flight == 0

    asyncio.run(scenario())
