"""The meter-agent's reading loop survives an unexpected error and says so in its health:
it must never die silently while the node answers SERVING."""

from __future__ import annotations

import threading

from gridledger_meter_agent.main import run_agent


class FlakyReader:
    """Fails on its first two polls (a storage or driver error), then works."""

    def __init__(self, stop: threading.Event) -> None:
        self.polls = 0
        self.stop = stop

    def poll(self, now: int, backfill_seconds: int, max_intervals: int) -> int:
        self.polls += 1
        if self.polls <= 2:
            raise OSError("outbox write failed")
        if self.polls >= 3:
            self.stop.set()
        return 0


class IdleSender:
    awaiting = 0

    def drain(self, stop: threading.Event) -> bool:
        return True


def test_an_unexpected_error_turns_health_off_and_the_loop_recovers() -> None:
    stop = threading.Event()
    reader = FlakyReader(stop)
    health: list[bool] = []
    thread = threading.Thread(target=run_agent, args=(reader, IdleSender(), stop, 0, 1.0,
                                                      health.append))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert reader.polls == 3  # retried after each failure, never ended by it
    assert health == [False, True]  # reported once while failing, cleared when it worked


