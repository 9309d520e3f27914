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

A place also stands for the request a call may hold while it arrives: gRPC assembles a
message whole before the handler sees it, and a client may send all of one but its last
bytes and stop. Most requests are small (a transaction: the genesis `max_tx_bytes`), but a
batch may be 4 MiB: 128 such calls would pin half a gigabyte for one member. So of its
share, a member may hold at most `LARGE_SHARE` calls of the methods whose requests are
batches (`LARGE_REQUEST_METHODS`): 16 x 4 MiB per member at most; a head-end system sends
a few batches at a time.
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
LARGE_SHARE = 16  # of a member's share, calls of LARGE_REQUEST_METHODS in progress
LARGE_REQUEST_METHODS = frozenset({
    "/gridledger.endorser.v1.EndorserService/SubmitBatch",
    "/gridledger.endorser.v1.EndorserService/RequestOptionsBatch",
    "/gridledger.orderer.v1.OrdererService/BroadcastBatch",
})


def per_member(total: int, members: int) -> int:
    """A member's share of `total` places: equal among the consortium's `members` (at
    least one place, so a consortium larger than the total still gets served)."""
    return max(1, total // max(1, members))


class CallShares:
    """At most `share` calls in progress per member, of them at most `large_share` with
    large requests (thread-safe). Members are the genesis organisations, so the counters
    (and metric labels) are bounded by the consortium."""

    def __init__(self, share: int, large_share: int = LARGE_SHARE) -> None:
        if share < 1 or large_share < 1:
            raise ValueError(f"a member's shares of calls must be at least 1, not {share} "
                             f"and {large_share}")
        self.share = share
        self.large_share = min(share, large_share)
        self._held: dict[str, int] = {}
        self._large: dict[str, int] = {}  # member -> its calls with large requests
        self._gauges: dict[str, Any] = {}  # member -> its HELD child (labels() costs a lookup)
        self._lock = threading.Lock()

    def enter(self, member: str, large: bool = False) -> bool:
        """Take one of `member`'s places (`large`: for a call of LARGE_REQUEST_METHODS);
        False (nothing taken) when it holds its share, or its share of large calls."""
        return self.try_enter(member, large) is None

    def try_enter(self, member: str, large: bool = False) -> str | None:
        """As `enter`, but a refusal says why: None when the place was taken, else the
        message for the caller, decided under the same lock as the refusal (read after it,
        the counts may already have changed: another call ended meanwhile)."""
        with self._lock:
            held = self._held.get(member, 0)
            large_held = self._large.get(member, 0) if large else 0
            by_large = large and large_held >= self.large_share
            refused = held >= self.share or by_large
            if not refused:
                self._held[member] = held + 1
                if large:
                    self._large[member] = large_held + 1
            gauge = self._gauges.get(member)
            if gauge is None:
                gauge = self._gauges[member] = HELD.labels(member)
        if refused:
            REFUSED.labels(member).inc()
            return self._refusal(member, by_large)
        gauge.inc()
        return None

    def leave(self, member: str, large: bool = False) -> None:
        """Give back a place taken by `enter` (with the same `large`)."""
        with self._lock:
            _give_back(self._held, member)
            if large:
                _give_back(self._large, member)
            gauge = self._gauges[member]
        gauge.dec()

    def held(self, member: str, large: bool = False) -> int:
        with self._lock:
            return (self._large if large else self._held).get(member, 0)

    def _refusal(self, member: str, by_large: bool) -> str:
        if by_large:
            return (f"{member} holds its share of this server's batch calls in progress "
                    f"({self.large_share}: each may hold a request of megabytes while it "
                    "arrives); call again when one of them has ended")
        return (f"{member} holds its share of this server's calls in progress ({self.share} "
                "calls: the server's places shared equally among the consortium's members); "
                "call again when one of them has ended")


def _give_back(counts: dict[str, int], member: str) -> None:
    """One fewer for `member` in `counts`; a member holding none has no entry (the dicts stay
    as small as the members with calls in progress)."""
    held = counts[member] - 1
    if held:
        counts[member] = held
    else:
        del counts[member]
