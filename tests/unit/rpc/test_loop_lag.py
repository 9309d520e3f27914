"""The event-loop lag probe: a loop kept busy shows as the probe's late wake-up."""

from __future__ import annotations

import asyncio
import time

import pytest

from gridledger_core.rpc import event_loops
from gridledger_core.rpc.loop_lag import watch_lag


async def _observed_while(busy_seconds: float) -> list[float]:
    observed: list[float] = []
    probe = asyncio.ensure_future(watch_lag(period=0.01, observe=observed.append))
    await asyncio.sleep(0.05)  # idle: the probe wakes about on time
    time.sleep(busy_seconds)  # a handler computing on the loop's thread
    await asyncio.sleep(0.05)
    probe.cancel()
    return observed


@pytest.mark.parametrize("kind", event_loops.CHOICES)
def test_a_busy_loop_shows_as_the_probes_late_wake_up(kind: str) -> None:
    with asyncio.Runner(loop_factory=lambda: event_loops.new_event_loop(kind)) as runner:
        observed = runner.run(_observed_while(0.3))
    # The probe was due at most 10 ms into the 300 ms the loop was held.
    longest = observed.index(max(observed))
    assert observed[longest] >= 0.25
    assert all(lag >= 0.0 for lag in observed)
    assert longest < len(observed) - 1  # and it went on watching afterwards
