"""The agent's worker loops report their part of its health (loop_health.py): not live once
UNHEALTHY_AFTER passes in a row failed on their own account, not ready once as many found
their endorser or committer away, both SERVING again when a pass works, told only on a
change. The issuer's and a plant's announcer loops never told anyone: an issuer whose every
pass failed stayed SERVING. Counted toward liveness, an outage of the endorser or committer
had the liveness probe restart the agent through it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_helpers import StatusError

from gridledger_core.genesis import Genesis
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.issuer import Issuer
from gridledger_meter_agent.loop_health import (
    UNHEALTHY_AFTER,
    FailingPasses,
    away,
    unreachable,
)
from gridledger_meter_agent.plant import PlantAgent, PlantConfig


def test_unhealthy_after_failures_in_a_row_and_healthy_after_one_pass() -> None:
    told: list[bool] = []
    passes = FailingPasses(told.append)
    for _ in range(UNHEALTHY_AFTER - 1):
        passes.failed()
    passes.passed()  # a pass between failures starts the count again
    assert told == []
    assert [passes.failed() for _ in range(UNHEALTHY_AFTER + 1)] == list(
        range(1, UNHEALTHY_AFTER + 2))
    assert told == [False]  # told once, at the change
    passes.passed()
    passes.passed()
    assert told == [False, True]
    passes.passed(healthy_otherwise=False)  # the loop's own condition (a stuck slot)
    assert told == [False, True, False]


def test_passes_finding_the_ledger_unreachable_turn_readiness_off_and_leave_liveness_on(
        ) -> None:
    live: list[bool] = []
    ready: list[bool] = []
    passes = FailingPasses(live.append, ready.append)
    away_now = StatusError(grpc.StatusCode.UNAVAILABLE, "committer away")
    assert [passes.failed(cause=away_now) for _ in range(UNHEALTHY_AFTER)] == list(
        range(1, UNHEALTHY_AFTER + 1))  # the count for backoff is of every failed pass
    assert (live, ready) == ([], [False])
    for _ in range(UNHEALTHY_AFTER - 1):
        passes.failed(cause=OSError(28, "No space left on device"))  # counted apart
    assert live == []
    passes.failed()
    assert (live, ready) == ([False], [False])
    passes.passed()
    assert (live, ready) == ([False, True], [False, True])
    passes.passed(ready_otherwise=False)  # the loop's own condition (a slot waiting)
    assert ready == [False, True, False]


def test_an_endorser_busy_with_other_members_turns_nothing_off() -> None:
    """RESOURCE_EXHAUSTED (the endorser's admission bound, which other members' load
    fills) is no failure of the loop's, nor a reason to take it out of service: another
    member must not be able to do that."""
    live: list[bool] = []
    ready: list[bool] = []
    passes = FailingPasses(live.append, ready.append)
    busy = StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "admission bound reached")
    assert away(busy) and not unreachable(busy)
    for _ in range(3 * UNHEALTHY_AFTER):
        passes.failed(cause=busy)
    assert (live, ready, passes.in_a_row) == ([], [], 3 * UNHEALTHY_AFTER)


def _passes_then_stop(stop: threading.Event, wake: threading.Event | None
                      ) -> Callable[[], int]:
    """Passes that find the committer away as often as UNHEALTHY_AFTER (not ready), then
    fail UNHEALTHY_AFTER times (its disk: not live), then work twice, then stop the loop."""
    count = 0

    def one_pass() -> int:
        nonlocal count
        count += 1
        if wake is not None:
            wake.set()  # no waiting between passes in the test
        if count <= UNHEALTHY_AFTER:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "committer away")
        if count <= 2 * UNHEALTHY_AFTER:
            raise OSError(28, "No space left on device")
        if count == 2 * UNHEALTHY_AFTER + 2:
            stop.set()
        return 0
    return one_pass


def test_the_endorser_or_committer_away_is_not_the_loops_failure() -> None:
    """Counted, an outage of the agent's endorser or committer would have its liveness
    probe restart it through the outage, which mends nothing."""
    assert away(StatusError(grpc.StatusCode.UNAVAILABLE, "committer away"))
    assert away(StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"))
    assert away(TimeoutError("no commit yet"))
    assert not away(StatusError(grpc.StatusCode.PERMISSION_DENIED, "not this agent's"))
    assert not away(OSError(28, "No space left on device"))


def test_an_issuer_whose_passes_keep_failing_is_not_serving_until_one_works(
        consortium_dir: Path, genesis: Genesis) -> None:
    issuer = Issuer(SigningIdentity.load(consortium_dir, "issuer"), genesis,
                    None)  # type: ignore[arg-type]
    stop, wake = threading.Event(), threading.Event()
    issuer.issue_once = _passes_then_stop(stop, wake)  # type: ignore[method-assign]
    told: list[bool] = []
    ready: list[bool] = []
    issuer.run(stop, wake, told.append, ready.append)
    assert (told, ready) == ([False, True], [False, True])


def test_a_plant_whose_announcements_keep_failing_is_not_serving_until_one_works(
        consortium_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = PlantConfig(price_micro_per_kwh=100_000, threshold_w=1, pv_panel_ids=("p",),
                         coin_value_micro=100, endpoint="x", announce_seconds=0)
    plant = PlantAgent(SigningIdentity.load(consortium_dir, "plant-1"), None,  # type: ignore[arg-type]
                       config, None)
    stop = threading.Event()
    plant.close_expired = lambda now: 0  # type: ignore[method-assign]
    plant.announce_once = _passes_then_stop(stop, None)  # type: ignore[method-assign,assignment]
    monkeypatch.setattr(stop, "wait", lambda _seconds: stop.is_set())  # no waiting
    told: list[bool] = []
    ready: list[bool] = []
    plant.run(stop, told.append, ready.append)
    assert (told, ready) == ([False, True], [False, True])
