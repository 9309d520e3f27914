"""The endorser's watch over its front processes (gridledger_endorser/fronts.py): started
again when one exits (never in a tight loop), counted, and all of them stopped, the
stubborn ones killed, when the endorser stops."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from signed_blocks import wait_for

from gridledger_endorser import fronts as fronts_module
from gridledger_endorser.fronts import RESTARTS, RUNNING, Fronts

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
QUITTER = [sys.executable, "-c", "pass"]


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fronts_module, "POLL_S", 0.05)
    monkeypatch.setattr(fronts_module, "QUICK_EXIT_S", 0.5)


@pytest.fixture
def started() -> Iterator[Callable[..., Fronts]]:
    made: list[Fronts] = []

    def start(command: list[str], count: int = 2) -> Fronts:
        fronts = Fronts(lambda _index: command, count)
        fronts.start()
        made.append(fronts)
        return fronts
    yield start
    for fronts in made:
        fronts.stop(grace_s=0.5)


def test_an_exited_front_is_started_again_and_counted(started: Callable[..., Fronts]) -> None:
    fronts = started(SLEEPER)
    first = fronts.pids
    assert len(first) == 2 and RUNNING._value.get() == 2
    restarts = RESTARTS._value.get()
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(fronts.pids) == 2 and first[0] not in fronts.pids,
             "the killed front started again", timeout=10)
    assert RESTARTS._value.get() == restarts + 1
    assert first[1] in fronts.pids  # the other was left alone


def test_fronts_that_keep_exiting_are_not_started_in_a_tight_loop(
        started: Callable[..., Fronts]) -> None:
    restarts = RESTARTS._value.get()
    fronts = started(QUITTER, count=1)
    time.sleep(1.6)  # three QUICK_EXIT_S periods
    assert RESTARTS._value.get() - restarts <= 3
    wait_for(lambda: fronts.pids == [] and RUNNING._value.get() == 0, "no front running",
             timeout=10)


def test_stop_ends_every_front_and_kills_one_that_ignores_sigterm(
        started: Callable[..., Fronts]) -> None:
    fronts = started(STUBBORN, count=1)
    pid = fronts.pids[0]
    time.sleep(0.3)  # let it install its handler
    began = time.monotonic()
    fronts.stop(grace_s=0.2)
    assert time.monotonic() - began < 5
    assert fronts.pids == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_endorser_with_fronts_has_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Fronts(lambda _index: SLEEPER, 0)
