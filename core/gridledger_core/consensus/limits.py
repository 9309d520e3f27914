"""Per-peer token buckets: how the replica bounds the work any one orderer can make it do."""

from __future__ import annotations


class PeerRateLimiter:
    """At most ``burst`` inputs at once and ``rate`` per second after that, per peer, judged by
    the replica's ``now`` (so simulations stay deterministic). Peers are the known orderers
    only, so the table is bounded by the orderer set."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, last refill)

    def allow(self, peer: str, now: float) -> bool:
        tokens, last = self._buckets.get(peer, (self.burst, now))
        # A clock step backwards must not lock a peer out: refill from the earlier time.
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[peer] = (tokens, now)
            return False
        self._buckets[peer] = (tokens - 1.0, now)
        return True
