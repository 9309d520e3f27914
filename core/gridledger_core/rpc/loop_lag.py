"""How late an asyncio node's loop runs what is due: its event-loop lag.

An asyncio node (the endorser) computes every call on one loop thread, which shares the GIL
with the node's other threads (its ledger replica's commits, the broadcaster's senders).
While that thread is busy, a call that has arrived waits before its handler even starts: a
wait no handler-time histogram (`grpc_server_handling_seconds`) sees, and the first thing to
look at when a client's latency is far above the handler's. A probe task asks to be woken
every `PERIOD` and records how late it was woken: what anything ready on the loop then
waited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import Histogram

PERIOD = 0.02  # 50 wake-ups a second: tens of microseconds of the loop's time each

LAG = Histogram("gridledger_loop_lag_seconds",
                "How late the node's asyncio loop woke a timer due every 20 ms: how long "
                "anything ready on the loop waited then.",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))


async def watch_lag(period: float = PERIOD,
                    observe: Callable[[float], None] = LAG.observe) -> None:
    """Run until cancelled, observing each wake-up's delay past its due time. Timed by
    `time.monotonic()`, not the loop's clock: uvloop's reads in whole milliseconds, the
    histogram's first bucket."""
    while True:
        due = time.monotonic() + period
        await asyncio.sleep(period)
        observe(max(0.0, time.monotonic() - due))
