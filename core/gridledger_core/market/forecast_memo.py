"""The forecast of a meter's slot from its readings on the ledger, memoised per process.

The quantity check of a trade request (``ledger/rules/market.py::quantity_allowance``) runs up
to three times per order in the endorser (its preset checks, the simulation of the submit,
its replica's commit) and once in every committer, each time parsing the same ~28 readings
and redoing the same arithmetic. Here the point reads still happen every time (they are the
state the verdict depends on), but parsing and ``forecast`` are done once per distinct input.

Why the memo is exact. ``forecast(readings, slot_start, slot_seconds, params, as_of)`` is a
pure function, and the readings are a pure function of the raw bytes the state returned for
the candidate keys. ``as_of`` enters only through the set of readings whose interval ends at
or before it, i.e. through ``bisect_right(ends, as_of)`` over the readings' sorted distinct
interval ends. So the result is keyed on (the raw bytes, slot_start, slot_seconds, params,
that index): a reading that arrives, changes or disappears changes the bytes and so the key.
A call that raises (undecodable bytes, overlapping or negative readings) stores nothing and
raises again the next time.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import lru_cache

from gridledger.common.v1 import transaction_pb2
from gridledger_core.lru import Lru
from gridledger_core.market import ledger_view as view
from gridledger_core.market.forecast import Forecast, ForecastParams, forecast

# A key holds a meter's ~28 readings (~2 KB); both maps share the bytes of one history, so a
# few thousand (meter, slot) pairs stay around 10 MB.
CAPACITY = 4096

Raw = tuple[bytes, ...]


# raw -> (the instance of raw the result keys hold, sorted distinct interval ends). Parsed
# readings are not kept: holding thousands of parsed messages made every miss slower (fresh,
# cold memory) than parsing again when a new ``as_of`` cut of a known history is asked for.
_ENDS: Lru[Raw, tuple[Raw, tuple[int, ...]]] = Lru(CAPACITY)
_FORECASTS: Lru[tuple[Raw, int, int, ForecastParams, int], Forecast] = Lru(CAPACITY)


def _parse(raw: Raw) -> list[transaction_pb2.MeterReading]:
    return [transaction_pb2.MeterReading.FromString(item) for item in raw]


@lru_cache(maxsize=CAPACITY)
def _keys(meter: str, slot_start: int, slot_seconds: int, interval_seconds: int,
          params: ForecastParams) -> tuple[str, ...]:
    # Formatting the ~28 key strings costs as much as the point reads themselves.
    return tuple(view.forecast_keys(meter, slot_start, slot_seconds, interval_seconds, params))


def forecast_of(state: view.StateReader, meter: str, slot_start: int, slot_seconds: int,
                interval_seconds: int, params: ForecastParams, *,
                as_of: int | None = None) -> Forecast:
    """``forecast(view.forecast_readings(...), slot_start, slot_seconds, params, as_of=as_of)``,
    computed once per distinct input in this process."""
    keys = _keys(meter, slot_start, slot_seconds, interval_seconds, params)
    raw = tuple(item for item in state.get_many(keys) if item is not None)
    return forecast_of_raw(raw, slot_start, slot_seconds, params, as_of=as_of)


def forecast_of_raw(raw: Raw, slot_start: int, slot_seconds: int, params: ForecastParams, *,
                    as_of: int | None = None) -> Forecast:
    readings = None
    _, known = _ENDS.get(raw)  # a stored entry is never None
    if known is None:
        readings = _parse(raw)
        ends = tuple(sorted({r.interval_start + r.interval_seconds for r in readings}))
        known = (raw, ends)
        _ENDS.put(raw, known)
    raw, ends = known
    cut = len(ends) if as_of is None else bisect_right(ends, as_of)
    key = (raw, slot_start, slot_seconds, params, cut)
    hit, result = _FORECASTS.get(key)
    if hit and result is not None:
        return result
    if readings is None:
        readings = _parse(raw)
    result = forecast(readings, slot_start, slot_seconds, params, as_of=as_of)
    _FORECASTS.put(key, result)
    return result


def clear() -> None:
    """Forget every memoised history and forecast (for tests and benchmarks)."""
    _ENDS.clear()
    _FORECASTS.clear()
    _keys.cache_clear()
