"""The per-process forecast memo (issue 15) answers exactly what recomputing answers.

``forecast_memo.forecast_of`` against the direct computation (``ledger_view.forecast_readings``
then ``forecast``) over random reading sets, slots, windows and ``as_of``, with readings
arriving, changing and disappearing between the calls; errors (undecodable bytes, overlapping
readings) must be raised again, never remembered as an answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger.common.v1 import market_pb2, transaction_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.rules.market import forecast_params, quantity_allowance
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.lru import Lru
from gridledger_core.market import forecast_memo
from gridledger_core.market import ledger_view as view
from gridledger_core.market.forecast import (
    DAY_SECONDS,
    Forecast,
    ForecastParams,
    Weighting,
    forecast,
)
from gridledger_core.storage import MemoryStore

INTERVAL = 900
SLOT = 1_767_268_800  # 2026-01-01 12:00 UTC
METER = "meter-1"


def reading_bytes(start: int, seconds: int = INTERVAL, produced: int = 100,
                  consumed: int = 40) -> bytes:
    return transaction_pb2.MeterReading(meter=METER, interval_start=start,
                                        interval_seconds=seconds, produced_wh=produced,
                                        consumed_wh=consumed).SerializeToString()


def outcome(compute: Callable[[], Forecast]) -> tuple[Any, ...]:
    try:
        return ("ok", compute())
    except Exception as error:  # the same error must come out of both paths
        return ("error", type(error), str(error))


def direct(state: StateOverlay, slot: int, slot_seconds: int, params: ForecastParams,
           as_of: int | None) -> tuple[Any, ...]:
    return outcome(lambda: forecast(
        view.forecast_readings(state, METER, slot, slot_seconds, INTERVAL, params),
        slot, slot_seconds, params, as_of=as_of))


def memoised(state: StateOverlay, slot: int, slot_seconds: int, params: ForecastParams,
             as_of: int | None) -> tuple[Any, ...]:
    return outcome(lambda: forecast_memo.forecast_of(state, METER, slot, slot_seconds, INTERVAL,
                                                     params, as_of=as_of))


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    forecast_memo.clear()
    yield
    forecast_memo.clear()


# -- the property -----------------------------------------------------------------------------

# Candidate reading starts: around the spans of slots SLOT .. SLOT + 2 h, 1 to 3 days back.
STARTS = st.builds(lambda d, j: SLOT - d * DAY_SECONDS + j * INTERVAL,
                   st.integers(1, 3), st.integers(-2, 12))
# Mostly honest 15-minute readings; sometimes another length (straddling spans, overlapping
# the next reading, ending past the window), a start that is not the key's, or junk bytes.
VALUES = st.one_of(
    st.builds(lambda p, c: (0, INTERVAL, p, c), st.integers(0, 900), st.integers(0, 900)),
    st.builds(lambda shift, s, p: (shift, s, p, 0), st.sampled_from([0, 0, 450, -900]),
              st.sampled_from([450, 1800, 2700, INTERVAL]), st.integers(0, 900)),
    st.binary(max_size=6),
)
PUT = st.tuples(st.just("put"), STARTS, VALUES)
# A whole span of honest readings (a present day for the slot ``hour`` hours after SLOT).
DAY = st.tuples(st.just("day"), st.integers(1, 3), st.integers(0, 2),
                st.lists(st.integers(0, 900), min_size=4, max_size=4))
DELETE = st.tuples(st.just("delete"), STARTS)
WINDOWS = st.builds(ForecastParams, st.integers(1, 3), st.sampled_from(list(Weighting)))


@st.composite
def queries(draw: st.DrawFn) -> tuple:
    """One slot and window asked about at several clocks in a row: None, after every reading,
    or the end of one of the slot's readings and the second before it (one more reading
    counts), so hits and near-misses of the ``as_of`` part of the key both occur."""
    slot = draw(st.sampled_from([SLOT, SLOT + 3600, SLOT + 7200]))
    clocks: list[int | None] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["none", "late", "edge"]))
        if kind == "none":
            clocks.append(None)
        elif kind == "late":
            clocks.append(SLOT + draw(st.integers(0, 3600)))
        else:
            end = slot - draw(st.integers(1, 3)) * DAY_SECONDS + draw(st.integers(1, 4)) * INTERVAL
            clocks += draw(st.permutations([end - 1, end]))
    return ("query", slot, draw(st.sampled_from([INTERVAL, 3600])), draw(WINDOWS), clocks)


QUERY = queries()


@settings(deadline=None, max_examples=200)
@given(history=st.lists(DAY, min_size=1, max_size=9),
       ops=st.lists(st.one_of(DAY, PUT, DELETE, QUERY), min_size=1, max_size=20))
def test_memoised_forecast_equals_recomputing(history: list[tuple], ops: list[tuple]) -> None:
    """After every change of the readings, every question asked so far is asked again: the
    memo must answer it as recomputing does (the key changed), and again from the memo."""
    forecast_memo.clear()
    state = StateOverlay(MemoryStore())
    asked: list[tuple[int, int, ForecastParams, int | None]] = []
    for op in history + ops:
        if op[0] == "day":
            _, days_back, hour, energies = op
            span = SLOT + hour * 3600 - days_back * DAY_SECONDS
            for q, produced in enumerate(energies):
                start = span + q * INTERVAL
                state.put(schema.reading_key(METER, start),
                          reading_bytes(start, produced=produced, consumed=q * 50))
        elif op[0] == "put":
            _, start, value = op
            if isinstance(value, bytes):
                raw = value
            else:
                shift, seconds, produced, consumed = value
                raw = reading_bytes(start + shift, seconds, produced, consumed)
            state.put(schema.reading_key(METER, start), raw)
        elif op[0] == "delete":
            state.delete(schema.reading_key(METER, op[1]))
        else:
            _, slot, slot_seconds, params, clocks = op
            asked += [(slot, slot_seconds, params, as_of) for as_of in clocks]
        for slot, slot_seconds, params, as_of in asked:
            expected = direct(state, slot, slot_seconds, params, as_of)
            assert memoised(state, slot, slot_seconds, params, as_of) == expected
            assert memoised(state, slot, slot_seconds, params, as_of) == expected  # a hit


# -- what is and is not computed again ----------------------------------------------------------

@pytest.fixture()
def computations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per forecast the memo actually computes."""
    calls: list[int] = []
    real = forecast_memo.forecast

    def counting(*args: Any, **kwargs: Any) -> Forecast:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(forecast_memo, "forecast", counting)
    return calls


def full_day(state: StateOverlay, days_back: int, produced: int = 100) -> None:
    for q in range(4):
        start = SLOT - days_back * DAY_SECONDS + q * INTERVAL
        state.put(schema.reading_key(METER, start), reading_bytes(start, produced=produced))


def test_identical_inputs_compute_once_and_new_readings_compute_again(
        computations: list[int]) -> None:
    params = ForecastParams(3)
    state = StateOverlay(MemoryStore())
    full_day(state, 1)
    now = SLOT - 3600
    first = memoised(state, SLOT, 3600, params, now)
    assert memoised(state, SLOT, 3600, params, now) == first
    # Later clocks that see the same readings (all ended already) are the same input.
    assert memoised(state, SLOT, 3600, params, now + 600) == first
    assert memoised(state, SLOT, 3600, params, None) == first
    assert len(computations) == 1
    full_day(state, 2, produced=400)  # a reading arrives: different bytes, a new key
    second = memoised(state, SLOT, 3600, params, now)
    assert second != first and second == direct(state, SLOT, 3600, params, now)
    assert len(computations) == 2
    # An as_of before the last reading's end sees fewer readings: computed, and correct.
    early = SLOT - DAY_SECONDS + 3600 - 1
    assert memoised(state, SLOT, 3600, params, early) == direct(state, SLOT, 3600, params, early)
    assert len(computations) == 3
    changed = SLOT - DAY_SECONDS
    state.put(schema.reading_key(METER, changed), reading_bytes(changed, produced=7))
    assert memoised(state, SLOT, 3600, params, now) == direct(state, SLOT, 3600, params, now)
    assert len(computations) == 4


def test_errors_are_raised_again_not_remembered(computations: list[int]) -> None:
    params = ForecastParams(1)
    state = StateOverlay(MemoryStore())
    start = SLOT - DAY_SECONDS
    full_day(state, 1)
    state.put(schema.reading_key(METER, start), reading_bytes(start, seconds=1800))
    for _ in range(2):
        with pytest.raises(ValueError, match="overlap"):
            forecast_memo.forecast_of(state, METER, SLOT, 3600, INTERVAL, params, as_of=SLOT)
    assert len(computations) == 2
    state.put(schema.reading_key(METER, start + 2 * INTERVAL), b"\xff\xff")
    for _ in range(2):
        assert memoised(state, SLOT, 3600, params, SLOT)[0] == "error"


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    histories: Lru = Lru(3)
    forecasts: Lru = Lru(3)
    monkeypatch.setattr(forecast_memo, "_ENDS", histories)
    monkeypatch.setattr(forecast_memo, "_FORECASTS", forecasts)
    state = StateOverlay(MemoryStore())
    for days_back in range(1, 8):
        full_day(state, days_back, produced=10 * days_back)
        assert memoised(state, SLOT, 3600, ForecastParams(7), SLOT) == \
            direct(state, SLOT, 3600, ForecastParams(7), SLOT)
    assert len(histories) == 3 and len(forecasts) == 3


# -- through the rule ---------------------------------------------------------------------------

def test_the_quantity_check_sees_a_reading_that_arrives_between_checks(genesis: Genesis) -> None:
    """The endorser checks, a reading commits, the committer checks: the allowance moves."""
    market = genesis.market
    interval = genesis.reading_interval_seconds
    slot = SLOT - SLOT % market.slot_seconds
    terms = market_pb2.OrderTerms(meter=METER, side=view.SELL_PB, slot_start=slot,
                                  price=market.price_tick, quantity_wh=market.lot_wh)
    state = StateOverlay(MemoryStore())

    def put_day(days_back: int, produced: int) -> None:
        span = slot - days_back * DAY_SECONDS
        for start in range(span, span + market.slot_seconds, interval):
            state.put(schema.reading_key(METER, start), transaction_pb2.MeterReading(
                meter=METER, interval_start=start, interval_seconds=interval,
                produced_wh=produced).SerializeToString())

    def recomputed(now: int) -> int:
        params = forecast_params(market)
        return forecast(view.forecast_readings(state, METER, slot, market.slot_seconds,
                                               interval, params),
                        slot, market.slot_seconds, params, as_of=now).net_wh

    now = slot - 2 * market.gate_closure_seconds
    put_day(2, 100)
    before = quantity_allowance(state, genesis, terms, now)
    assert before.forecast_net_wh == recomputed(now) > 0
    put_day(1, 1_000)
    after = quantity_allowance(state, genesis, terms, now)
    assert after.forecast_net_wh == recomputed(now) > before.forecast_net_wh
