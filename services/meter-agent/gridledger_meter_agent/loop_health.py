"""A worker loop's part of the agent's health (rpc/health_board.py): not live once its own
passes keep failing (one passing failure must not get the agent restarted), not ready once
its endorser or committer has been away for as many passes; both SERVING again when a pass
works.

For loops doing the agent's own job (settlement, pre-sale, issuing, announcing); not for
what only a peer's conduct can fail (a neighbour that does not answer, a plant that refuses
terms): another member must not be able to take this agent out of service. The endorser or
committer away (`away`) is no failure of the loop's: counted toward liveness, the liveness
probe would restart the agent through the outage (into CrashLoopBackOff, delaying its
return), which mends nothing; unreachable (`unreachable`), it counts toward readiness,
which takes the agent out of service until its ledger is back; busy (RESOURCE_EXHAUSTED,
which other members' load can cause), toward nothing."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from gridledger_meter_agent.ledger_client import TRANSIENT

UNHEALTHY_AFTER = 3  # passes failed in a row before the agent is NOT_SERVING


def away(exc: BaseException) -> bool:
    """The endorser or committer away or busy for now (a transient gRPC status, or a
    timeout): not the loop's failure. Counted, it would have the liveness probe restart the
    agent through the outage (into CrashLoopBackOff, delaying its return), which mends
    nothing."""
    if isinstance(exc, TimeoutError):
        return True
    return _code(exc) in TRANSIENT


def unreachable(exc: BaseException) -> bool:
    """Of `away`: the endorser or committer cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED,
    a timeout), which takes the agent out of service (readiness). Not RESOURCE_EXHAUSTED:
    busy with other members' calls (the endorser's admission bound), which must not take
    this agent out of service."""
    if isinstance(exc, TimeoutError):
        return True
    return _code(exc) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


OWN, UNREACHABLE, BUSY = "own", "unreachable", "busy"


def kind_of(cause: BaseException | None) -> str:
    """How a failure counts: OWN (toward liveness; None stands for a refusal or an invalid
    commit), UNREACHABLE (toward readiness) or BUSY (toward neither). The one rule for every
    loop, and for the settler's slots."""
    if cause is None or not away(cause):
        return OWN
    return UNREACHABLE if unreachable(cause) else BUSY


def _code(exc: BaseException) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None


class FailingPasses:
    def __init__(self, on_health: Callable[[bool], None],
                 on_ready: Callable[[bool], None] = lambda ready: None,
                 unhealthy_after: int = UNHEALTHY_AFTER) -> None:
        self._on_health = on_health
        self._on_ready = on_ready
        self._unhealthy_after = unhealthy_after
        self._healthy = True
        self._ready = True
        self.in_a_row = 0  # passes failed in a row, whatever the cause (for backoff)
        self._own = 0  # of which the loop's own failures
        self._unreachable = 0  # of which its endorser or committer unreachable

    def passed(self, healthy_otherwise: bool = True, ready_otherwise: bool = True) -> None:
        """A pass worked (`healthy_otherwise`, `ready_otherwise`: the loop's other
        conditions hold, e.g. no slot failing again and again)."""
        self.in_a_row = self._own = self._unreachable = 0
        self._report(healthy_otherwise, ready_otherwise)

    def failed(self, healthy_otherwise: bool = True, *, cause: BaseException | None = None,
               ready_otherwise: bool = True) -> int:
        """A pass failed (`cause`: the exception that ended it): on the loop's own account,
        or with its endorser or committer away (`away`: unreachable counts toward readiness,
        busy toward nothing); how many passes have failed in a row."""
        self.in_a_row += 1
        kind = kind_of(cause)
        if kind == OWN:
            self._own += 1
        elif kind == UNREACHABLE:
            self._unreachable += 1
        self._report(healthy_otherwise, ready_otherwise)
        return self.in_a_row

    def _report(self, healthy_otherwise: bool, ready_otherwise: bool) -> None:
        healthy = self._own < self._unhealthy_after and healthy_otherwise
        if healthy != self._healthy:  # told only on a change
            self._healthy = healthy
            self._on_health(healthy)
        ready = self._unreachable < self._unhealthy_after and ready_otherwise
        if ready != self._ready:
            self._ready = ready
            self._on_ready(ready)
