"""Each member's share of a server's calls in progress.

A call holds a place on a gRPC server from the moment it starts, before its request has
arrived: the threaded server gives it a handler thread that waits for the request, the
asyncio server counts it against `maximum_concurrent_rpcs`. A client may open calls and
never send their requests (or send them a byte at a time), and a long-lived stream holds
its place for as long as the client keeps it. Without a bound per member, one member's
clients could take every place and no other member's call would be served: the threaded
server queues new calls for a free thread without end, the asyncio server refuses them.

So every call is counted against its member (the organisation whose TLS CA issued the
caller's certificate: a hostile member holds its own CA and can issue any number of
certificates, but only in its own name) from its start to its end, and a member may hold
at most an equal share of the server's places. A call beyond its member's share is refused
at once, RESOURCE_EXHAUSTED with a retry hint, and holds nothing; the other members keep
their shares whatever one member does (authz.py's interceptors apply this to every
call).
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter, Gauge

HELD = Gauge("gridledger_rpc_member_calls",
             "Calls in progress on this server, by the caller's member (organisation).",
             ["member"])
REFUSED = Counter("gridledger_rpc_member_calls_refused",
                  "Calls refused because the caller's member held its share of this server's "
                  "calls in progress.", ["member"])
# A refused client waits this long before calling again: calls end within milliseconds
# unless they are streams, and a member that holds its share with streams is told so.
RETRY_AFTER_MS = 200
UNBOUNDED = 1 << 30  # a member's share of calls when the server sets none (in-process tests)


def per_member(total: int, members: int) -> int:
    """A member's share of `total` places: equal among the consortium's `members` (at
    least one place, so a consortium larger than the total still gets served)."""
    return max(1, total // max(1, members))


class CallShares:
    """At most `share` calls in progress per member (thread-safe). Members are the genesis
    organisations, so the counters (and metric labels) are bounded by the consortium."""

    def __init__(self, share: int) -> None:
        if share < 1:
            raise ValueError(f"a member's share of calls must be at least 1, not {share}")
        self.share = share
        self._held: dict[str, int] = {}
        self._gauges: dict[str, Any] = {}  # member -> its HELD child (labels() costs a lookup)
        self._lock = threading.Lock()

    def enter(self, member: str) -> bool:
        """Take one of `member`'s places; False (nothing taken) when it holds its share."""
        with self._lock:
            held = self._held.get(member, 0)
            refused = held >= self.share
            if not refused:
                self._held[member] = held + 1
            gauge = self._gauges.get(member)
            if gauge is None:
                gauge = self._gauges[member] = HELD.labels(member)
        if refused:
            REFUSED.labels(member).inc()
            return False
        gauge.inc()
        return True

    def leave(self, member: str) -> None:
        """Give back a place taken by `enter`."""
        with self._lock:
            held = self._held[member] - 1
            if held:
                self._held[member] = held
            else:
                del self._held[member]
            gauge = self._gauges[member]
        gauge.dec()

    def held(self, member: str) -> int:
        with self._lock:
            return self._held.get(member, 0)

    def refusal(self, member: str) -> str:
        return (f"{member} holds its share of this server's calls in progress ({self.share} "
                "calls: the server's places shared equally among the consortium's members); "
                "call again when one of them has ended")
