"""Bounds the orderer puts on what others can make it hold: per-peer token buckets for
inbound consensus traffic and counted slots for long-lived streams.

Both are plain thread-safe counters with no clock of their own beyond `time.monotonic`, so
tests drive them directly."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrdererLimits:
    """What an operator may tune (see docs/operations.md); defaults fit a 4-orderer cluster
    with 1 MiB blocks. The per-transaction limit is not here: it is the consortium's
    (genesis `limits.max_tx_bytes`)."""

    # Largest gRPC message the orderer receives: a BroadcastBatch (8 MiB) or a SyncResponse
    # of 16 blocks of about 1 MiB each, with room for certificates.
    max_message_bytes: int = 20 << 20
    # Client transactions accepted but not yet taken by the consensus thread.
    inbox_client_bytes: int = 64 << 20
    # Each peer's messages waiting for the consensus thread (one budget per peer, so one
    # flooding peer cannot crowd out the others).
    inbox_peer_bytes: int = 16 << 20
    # Pending transactions this orderer holds, in bytes (the replica counts them too).
    pool_bytes: int = 256 << 20
    # Messages waiting to be sent to one peer.
    outbox_peer_bytes: int = 32 << 20
    # Inbound consensus traffic from one peer: sustained rate and burst.
    peer_bytes_per_second: float = 16 << 20
    peer_burst_bytes: float = 40 << 20
    peer_messages_per_second: float = 5_000
    peer_burst_messages: float = 20_000
    # Concurrent Deliver streams in total, per client identity (its TLS account) and per
    # member (the account's organisation: a member's CA can issue many client certificates,
    # so a per-certificate cap alone would let one member take the total). A member's cap is
    # also never above its equal share of the total (`member_cap`).
    deliver_streams: int = 16
    deliver_streams_per_client: int = 4
    deliver_streams_per_member: int = 8
    # Concurrent unary Broadcast / BroadcastBatch calls being handled (they wait for one
    # group commit together, so more waiting calls cost no more fsyncs), in total and per
    # member (an endorser sends on two; one member's flood leaves the rest to the others;
    # never above its equal share of the total either).
    broadcast_calls: int = 32
    broadcast_calls_per_member: int = 8
    # Concurrent Exchange streams per peer orderer (one, plus one while it reconnects).
    exchange_streams_per_peer: int = 2

    @staticmethod
    def member_cap(total: int, per_member: int, members: int) -> int:
        """What one member may hold of `total` concurrent slots: `per_member`, but never
        more than an equal share among the consortium's `members` (at least one). A
        stream or call cannot be taken back once granted, so a member that took more than
        its share would leave another below its own; with equal shares every member keeps
        its share however the others use theirs."""
        return max(1, min(per_member, total // max(1, members)))

    def warn_if_short(self, members: int) -> None:
        """Log when the totals cannot give every member what one needs (a Deliver stream;
        two Broadcast calls, as an endorser sends on two): shares then round up to one and
        the members together may ask for more than the total."""
        if self.deliver_streams < members:
            log.warning("--deliver-streams %d is below one stream per member (%d members)",
                        self.deliver_streams, members)
        if self.broadcast_calls < 2 * members:
            log.warning("--broadcast-calls %d is below two calls per member (%d members)",
                        self.broadcast_calls, members)

    def member_calls(self, members: int, orderers_per_member: int) -> int:
        """The calls one member may have in progress here (rpc/call_shares.py: every call
        holds a handler thread from its start, before its request arrives): its Deliver
        streams and Broadcast calls at their member caps, its orderers' Exchange streams,
        and two more (queries, health, reflection)."""
        return (self.member_cap(self.deliver_streams, self.deliver_streams_per_member, members)
                + self.member_cap(self.broadcast_calls, self.broadcast_calls_per_member,
                                  members)
                + self.exchange_streams_per_peer * orderers_per_member + 2)

    def worker_threads(self, members: int, orderers_per_member: int) -> int:
        """gRPC handler threads: every member's share of calls in progress, so a member
        that holds its whole share (with streams, or calls that never send their request)
        takes no thread from another, and a few more for health checks."""
        return members * self.member_calls(members, orderers_per_member) + 4


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take(n)` succeeds when n tokens are there."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, amount: float) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if amount > self._tokens:
                return False
            self._tokens -= amount
            return True


class PeerBudget:
    """One peer's inbound allowance: a message passes when both its bytes and its count fit."""

    def __init__(self, limits: OrdererLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._bytes = TokenBucket(limits.peer_bytes_per_second, limits.peer_burst_bytes, clock)
        self._messages = TokenBucket(limits.peer_messages_per_second,
                                     limits.peer_burst_messages, clock)

    def admit(self, size: int) -> bool:
        # Count first: a refused message then costs no byte tokens.
        return self._messages.take(1) and self._bytes.take(size)


class StreamSlots:
    """At most `total` concurrent holders, at most `per_identity` per identity and at most
    `per_member` (default: `total`) per member, the identity's organisation."""

    def __init__(self, total: int, per_identity: int, per_member: int | None = None) -> None:
        self._total = total
        self._per_identity = per_identity
        self._per_member = total if per_member is None else per_member
        self._held: collections.Counter[str] = collections.Counter()
        self._held_by_member: collections.Counter[str] = collections.Counter()
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self, identity: str, member: str = "") -> bool:
        with self._lock:
            if (self._count >= self._total or self._held[identity] >= self._per_identity
                    or self._held_by_member[member] >= self._per_member):
                return False
            self._held[identity] += 1
            self._held_by_member[member] += 1
            self._count += 1
            return True

    def release(self, identity: str, member: str = "") -> None:
        with self._lock:
            if self._held[identity] <= 0 or self._held_by_member[member] <= 0:
                return
            self._count -= 1
            for held, key in ((self._held, identity), (self._held_by_member, member)):
                held[key] -= 1
                if not held[key]:
                    del held[key]

    @property
    def in_use(self) -> int:
        return self._count
