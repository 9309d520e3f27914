"""A worker loop's part of the agent's health: NOT_SERVING once its passes keep failing
(one passing failure must not get the agent restarted), SERVING again when one works.

For loops doing the agent's own job (settlement, pre-sale, issuing, announcing); not for
what only a peer's conduct can fail (a neighbour that does not answer, a plant that refuses
terms): another member must not be able to take this agent out of service. The endorser or
committer away (`away`) is not counted by the loops that can wait for them (pre-sale,
issuing, announcing)."""

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
                 unhealthy_after: int = UNHEALTHY_AFTER) -> None:
        self._on_health = on_health
        self._unhealthy_after = unhealthy_after
        self._healthy = True
        self.in_a_row = 0

    def passed(self, healthy_otherwise: bool = True) -> None:
        """A pass worked (`healthy_otherwise`: the loop's other conditions hold)."""
        self.in_a_row = 0
        self._report(healthy_otherwise)

    def failed(self, healthy_otherwise: bool = True) -> int:
        """A pass failed; how many have in a row."""
        self.in_a_row += 1
        self._report(healthy_otherwise)
        return self.in_a_row

    def _report(self, healthy_otherwise: bool) -> None:
        healthy = self.in_a_row < self._unhealthy_after and healthy_otherwise
        if healthy != self._healthy:  # told only on a change
            self._healthy = healthy
            self._on_health(healthy)
