"""A worker loop's part of the agent's health (rpc/health_board.py): not live once its own
passes keep failing (one passing failure must not get the agent restarted), not ready once
its endorser or committer has been away for as many passes; both SERVING again when a pass
works.

For loops doing the agent's own job (settlement, pre-sale, issuing, announcing); not for
what only a peer's conduct can fail (a neighbour that does not answer, a plant that refuses
terms): another member must not be able to take this agent out of service. The endorser or
committer away (`away`) is no failure of the loop's: counted toward liveness, the liveness
probe would restart the agent through the outage (into CrashLoopBackOff, delaying its
return), which mends nothing; it counts toward readiness, which takes the agent out of
service until its ledger is back."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from gridledger_meter_agent.ledger_client import TRANSIENT

UNHEALTHY_AFTER = 3  # passes failed in a row before the agent is NOT_SERVING


def away(exc: BaseException) -> bool:
    """The endorser or committer away for now (a transient gRPC status, or a timeout): not
    the loop's failure. Counted, it would have the liveness probe restart the agent through
    the outage (into CrashLoopBackOff, delaying its return), which mends nothing."""
    if isinstance(exc, TimeoutError):
        return True
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    return code in TRANSIENT


class FailingPasses:
    def __init__(self, on_health: Callable[[bool], None],
                 on_ready: Callable[[bool], None] = lambda ready: None,
                 unhealthy_after: int = UNHEALTHY_AFTER) -> None:
        self._on_health = on_health
        self._on_ready = on_ready
        self._unhealthy_after = unhealthy_after
        self._healthy = True
        self._ready = True
        self.in_a_row = 0  # passes failed in a row, whatever the reason (for backoff)
        self._own = 0  # of which the loop's own failures
        self._away = 0  # of which its endorser or committer away

    def passed(self, healthy_otherwise: bool = True) -> None:
        """A pass worked (`healthy_otherwise`: the loop's other conditions hold)."""
        self.in_a_row = self._own = self._away = 0
        self._report(healthy_otherwise)

    def failed(self, healthy_otherwise: bool = True, *, away: bool = False) -> int:
        """A pass failed, on the loop's own account or (`away`) because its endorser or
        committer is away; how many passes have failed in a row."""
        self.in_a_row += 1
        if away:
            self._away += 1
        else:
            self._own += 1
        self._report(healthy_otherwise)
        return self.in_a_row

    def _report(self, healthy_otherwise: bool) -> None:
        healthy = self._own < self._unhealthy_after and healthy_otherwise
        if healthy != self._healthy:  # told only on a change
            self._healthy = healthy
            self._on_health(healthy)
        ready = self._away < self._unhealthy_after
        if ready != self._ready:
            self._ready = ready
            self._on_ready(ready)
