"""In-process rate of the pre-sale quantity check with and without the forecast memo (issue 15).

``quantity_allowance`` (the preset condition ``quantity_above_forecast``) reads a meter's ~28
forecast readings from LMDB, parses them and computes the forecast. The endorser runs it up
to three times per order and every committer once more, on the same readings. Three timings
over the same meters and slot, through the real rule on a ``StateOverlay`` over LMDB:

- ``direct``: the computation without any memo (what every call cost before);
- ``cold``: the memoised rule with an empty memo (each meter's first check: a miss);
- ``warm``: the memoised rule again (the endorser's second and third check, a committer's).

The point reads happen in all three; what the memo saves is the parsing and the arithmetic.
Run: ``.venv/bin/python -m bench.forecast_memo [--profile quick|standard]``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.cli import profile_parser
from gridledger.common.v1 import market_pb2, transaction_pb2
from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.rules.market import Allowance, forecast_params, quantity_allowance
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.market import forecast_memo
from gridledger_core.market import ledger_view as view
from gridledger_core.market.forecast import DAY_SECONDS, forecast
from gridledger_core.storage import LmdbStore
from gridledger_core.storage.base import WriteBatch

SLOT = 1_767_225_600  # 2026-01-01 00:00 UTC
PROFILES = {"quick": (200, 3), "standard": (500, 5)}  # (meters, timed passes over them)


def _direct_allowance(state: view.StateReader, genesis: Genesis, terms: market_pb2.OrderTerms,
                      now: int) -> Allowance:
    """``quantity_allowance`` as it was before the memo: parse and compute on every call."""
    market = genesis.market
    params = forecast_params(market)
    readings = view.forecast_readings(state, terms.meter, terms.slot_start, market.slot_seconds,
                                      genesis.reading_interval_seconds, params)
    net = forecast(readings, terms.slot_start, market.slot_seconds, params, as_of=now).net_wh
    available = max(0, net) if terms.side == view.SELL_PB else max(0, -net)
    allowance = available + available * market.forecast_tolerance_percent // 100
    return Allowance(net, allowance,
                     view.committed_wh(state, terms.meter, terms.slot_start, terms.side))


def _fill(store: LmdbStore, genesis: Genesis, meters: list[str]) -> None:
    """Eight days of 15-minute readings before the slot for every meter."""
    interval = genesis.reading_interval_seconds
    batch = WriteBatch()
    for i, meter in enumerate(meters):
        for start in range(SLOT - 8 * DAY_SECONDS, SLOT, interval):
            reading = transaction_pb2.MeterReading(
                meter=meter, interval_start=start, interval_seconds=interval,
                produced_wh=(start // interval * 7 + i) % 400, consumed_wh=(start + i) % 300)
            batch.put(schema.state_key(schema.reading_key(meter, start)),
                      reading.SerializeToString(deterministic=True))
    store.commit(batch)


def _rate(check: Callable[[StateOverlay, Genesis, market_pb2.OrderTerms, int], Allowance],
          store: LmdbStore, genesis: Genesis, orders: list[market_pb2.OrderTerms], now: int,
          passes: int, *, clear_each_pass: bool) -> tuple[float, float, list[Allowance]]:
    """(checks per CPU second, checks per wall second), medians over the passes, and the
    answers of the last pass. CPU time leads: on a shared machine wall time includes waiting
    for a core."""
    cpu_rates, wall_rates = [], []
    answers: list[Allowance] = []
    for _ in range(passes):
        if clear_each_pass:
            forecast_memo.clear()
        state = StateOverlay(store)
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        answers = [check(state, genesis, terms, now) for terms in orders]
        cpu_rates.append(len(orders) / max(time.process_time() - cpu_start, 1e-9))
        wall_rates.append(len(orders) / (time.perf_counter() - start))
    return sorted(cpu_rates)[len(cpu_rates) // 2], sorted(wall_rates)[len(wall_rates) // 2], \
        answers


def run(profile: str = "standard") -> dict:
    n_meters, passes = PROFILES[profile]
    with tempfile.TemporaryDirectory(prefix="gridledger-forecast-memo-") as tmp:
        directory = Path(tmp)
        create_consortium(directory / "consortium", default_topology())
        genesis = Genesis.load(directory / "consortium" / "genesis.json")
        store = LmdbStore(directory / "ledger", sync=False)
        try:
            meters = [f"meter-{i}" for i in range(n_meters)]
            _fill(store, genesis, meters)
            orders = [market_pb2.OrderTerms(meter=m, side=view.SELL_PB, slot_start=SLOT,
                                            price=100_000, quantity_wh=100) for m in meters]
            now = SLOT - 2 * 3600
            direct = _rate(_direct_allowance, store, genesis, orders, now, passes,
                           clear_each_pass=True)
            cold = _rate(quantity_allowance, store, genesis, orders, now, passes,
                         clear_each_pass=True)
            warm = _rate(quantity_allowance, store, genesis, orders, now, passes,
                         clear_each_pass=False)
            assert cold[2] == direct[2] and warm[2] == direct[2], \
                "the memoised allowance differs from the direct one"
        finally:
            store.close()
            forecast_memo.clear()
    result = {
        "profile": profile,
        "meters": n_meters,
        "readings_per_check": len(view.forecast_keys(
            "m", SLOT, genesis.market.slot_seconds, genesis.reading_interval_seconds,
            forecast_params(genesis.market))),
        "direct_checks_per_cpu_s": round(direct[0]),
        "cold_checks_per_cpu_s": round(cold[0]),
        "warm_checks_per_cpu_s": round(warm[0]),
        "direct_checks_per_s": round(direct[1]),
        "cold_checks_per_s": round(cold[1]),
        "warm_checks_per_s": round(warm[1]),
        "warm_vs_direct_cpu": round(warm[0] / direct[0], 2),
    }
    print(f"forecast_memo [{profile}]: quantity checks per CPU second over {n_meters} meters "
          f"({result['readings_per_check']} reading reads each): "
          f"direct {result['direct_checks_per_cpu_s']:,}, "
          f"memo cold {result['cold_checks_per_cpu_s']:,}, "
          f"memo warm {result['warm_checks_per_cpu_s']:,} (x{result['warm_vs_direct_cpu']}); "
          f"per wall second {result['direct_checks_per_s']:,} / {result['cold_checks_per_s']:,}"
          f" / {result['warm_checks_per_s']:,}")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    run(profile_parser(__doc__, PROFILES).parse_args(argv).profile)


if __name__ == "__main__":
    main()
