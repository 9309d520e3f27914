"""The endorser's CPU slots: at most `slots` handler threads compute at once; the others wait
on a lock (not in the GIL convoy), and every one of them gets its turn."""

from __future__ import annotations

import threading
import time

import pytest

from gridledger_endorser.cpu_slots import CpuSlots


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_no_more_than_the_slots_compute_at_once_and_all_finish(slots: int) -> None:
    cpu = CpuSlots(slots)
    inside = peak = done = 0
    lock = threading.Lock()

    def handler() -> None:
        nonlocal inside, peak, done
        with cpu.held():
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.005)
            with lock:
                inside -= 1
        with lock:
            done += 1

    threads = [threading.Thread(target=handler) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert done == 24
    assert peak == slots


def test_a_slot_is_given_back_when_the_work_raises() -> None:
    cpu = CpuSlots(1)
    with pytest.raises(RuntimeError), cpu.held():
        raise RuntimeError("invalid transaction")
    with cpu.held():  # would block forever if the slot leaked
        pass


def test_zero_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CpuSlots(0)
