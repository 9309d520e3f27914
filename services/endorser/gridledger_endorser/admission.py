"""Admission control: the endorser takes no more than the network commits within a latency
budget, and refuses the rest at once (RESOURCE_EXHAUSTED with a retry hint).

The quantity bounded is this endorser's *in flight*: transactions it admitted (being checked,
endorsed, forwarded) or that an orderer acknowledged and the ledger it follows (its replica,
or its organisation's committer's) has not yet shown in a block. Every queue between a client
and the ledger (the endorser's handler and broadcaster queues, the orderers' pools, the
blocks being agreed) holds only in-flight transactions, so bounding it bounds them all.

The bound is measured, not configured (Little's law: in flight = rate x time in flight):

    capacity = clamp(budget x observed commit rate, floor, ceiling)

where the observed commit rate is how many of *this endorser's* transactions its ledger showed
committed (valid or not) per second over the last `window` seconds. At saturation the in-flight
set drains at the commit rate, so a transaction admitted at the bound waits about `budget`
before its commit.

The capacity estimate is that rate only when the window measured capacity: when this
endorser's in-flight set stayed at half its bound or more throughout it (RFC 7661's
validated window). Any other window measured what was asked, not what the network can
commit, and can only raise the estimate. Without this an endorser that was asked little for
one window (idle, a trickle, or one acknowledged transaction an orderer lost) fell back to
`floor`, and the next burst (a gate closure's readings, a head-end system's upload) was
refused for several windows while the network stood idle. A network that slows under load
still lowers the bound after one window, since its in-flight set then stays near the bound.
The estimate does not decay while little is asked: a burst after a quiet hour in which the
network slowed is admitted at the old bound and waits past the budget for one window, until
the bound follows.

The estimate bootstraps itself: with only `floor` in flight the commit rate is floor /
(unloaded latency), and the bound becomes budget / (unloaded latency) times that, so it grows
by that factor per window until the network, not the bound, limits the rate (which needs a
budget above the unloaded submit->commit latency, a few hundred ms). Counting
only this endorser's own transactions shares the network between several endorsers in
proportion to what each gets committed, instead of each claiming the whole rate.

The retry hint is half the budget (by then about half the in-flight set has committed and
been replaced; a sooner retry would mostly be refused again, and a refusal still costs a gRPC
call), or the mean interval between the replica's blocks (when slots free up) if that is
longer, at most the budget; at least `MIN_RETRY_MS`. An acknowledged transaction that
never shows up in a block (lost by a faulty orderer: the client resubmits it) stops counting
after `forget_after` seconds, so the bound cannot leak shut.

**Members share the bound fairly.** A member (the organisation of the caller's verified TLS
identity: a hostile member holds its own CA, but cannot speak for another organisation)
whose client floods the endorser would otherwise hold the whole in-flight set, and every
other member's calls would be refused. So the bound is shared max-min fairly among the
members with transactions in flight: a member below its share (capacity / active members)
is admitted even when the total is at capacity (up to a hard bound of twice the capacity);
a member at or above its share only borrows what is idle (the total is below capacity). A
flooding member therefore keeps what nobody else asks for and no more, and the others get
their share at once; what the flood borrowed drains within about the budget, as it commits.
"""

from __future__ import annotations

import argparse
import collections
import enum
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from gridledger_core.rpc.latency_budget import DEFAULT_LATENCY_BUDGET_MS

ADMITTED = Counter("gridledger_endorser_admission_admitted",
                   "Transactions admitted by admission control (also RequestOptions calls).",
                   ["kind"])
REFUSED = Counter("gridledger_endorser_admission_refused",
                  "Calls refused RESOURCE_EXHAUSTED because the in-flight bound was reached.",
                  ["kind"])
REFUSED_BY_MEMBER = Counter("gridledger_endorser_admission_refused_by_member",
                            "Transactions and RequestOptions calls refused by admission "
                            "control, by the caller's organisation (at its share of the bound).",
                            ["member"])
HELD = Gauge("gridledger_endorser_admission_held",
             "Transactions in flight, by the organisation admission control charged.", ["member"])
FORGOTTEN = Counter("gridledger_endorser_admission_forgotten",
                    "Acknowledged transactions never seen committed within forget_after "
                    "(they stop counting as in flight).")
CAPACITY = Gauge("gridledger_endorser_admission_capacity",
                 "Estimated capacity: transactions this endorser may have in flight.")
IN_FLIGHT = Gauge("gridledger_endorser_admission_in_flight",
                  "Transactions admitted and not yet seen committed on the ledger this "
                  "endorser follows.")
COMMIT_RATE = Gauge("gridledger_endorser_admission_commit_rate",
                    "This endorser's transactions committed per second (observed, windowed).")

DEFAULT_FLOOR = 64
DEFAULT_CEILING = 20_000
DEFAULT_WINDOW_S = 5.0
MIN_RETRY_MS = 20


@dataclass(frozen=True)
class AdmissionConfig:
    # Shared with the clients' slow-answer signal (core rpc/latency_budget.py); 0: admission
    # control off (no bound but the ceiling).
    budget_ms: int = DEFAULT_LATENCY_BUDGET_MS
    floor: int = DEFAULT_FLOOR
    ceiling: int = DEFAULT_CEILING
    window_s: float = DEFAULT_WINDOW_S
    forget_after_s: float = 60.0


class Admitted(enum.Enum):
    NEW = "new"  # admitted and counted in flight
    AGAIN = "again"  # its tx id is already in flight: let through, not counted twice
    REFUSED = "refused"


class Full(Exception):
    """The in-flight bound is reached and the member holds its share of it: refuse with
    RESOURCE_EXHAUSTED, retry after the hint."""

    def __init__(self, in_flight: int, capacity: int, retry_after_ms: int,
                 member: str = "", held: int = 0, share: int = 0) -> None:
        whose = (f"; {member or 'this caller'} holds {held}, its fair share is {share}"
                 if share else "")
        super().__init__(f"the endorser is at its admission bound ({in_flight} transactions in "
                         f"flight, capacity {capacity}: what the network commits within the "
                         f"latency budget{whose}); retry the same envelope after "
                         f"{retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class Admission:
    def __init__(self, config: AdmissionConfig = AdmissionConfig(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        # tx id -> (when admitted, member); insertion order is admission order (for forgetting).
        self._in_flight: dict[str, tuple[float, str]] = {}
        self._held: collections.Counter[str] = collections.Counter()  # member -> in flight
        self._commits: collections.deque[tuple[float, int]] = collections.deque()  # (at, n)
        self._committed_in_window = 0
        self._blocks: collections.deque[float] = collections.deque(maxlen=32)
        self._started = clock()
        self._estimated_rate = 0.0  # commits/s: the capacity estimate (module docstring)
        self._below_half_at = self._started  # when in flight was last below half the bound
        CAPACITY.set(self.capacity())

    # -- estimate ------------------------------------------------------------------------

    def commit_rate(self) -> float:
        """This endorser's transactions committed per second over the last window (over
        the time since start while that is shorter)."""
        with self._lock:
            return self._windowed_rate(self._clock())

    def _windowed_rate(self, now: float) -> float:
        """(Under the lock.)"""
        self._expire_commits(now)
        span = min(self._config.window_s, max(now - self._started, 1e-3))
        return self._committed_in_window / span

    def capacity(self) -> int:
        with self._lock:
            now = self._clock()
            return self._bound(self._capacity_rate(now, self._windowed_rate(now)))

    def _bound(self, rate: float) -> int:
        c = self._config
        if c.budget_ms <= 0:
            return c.ceiling
        return max(c.floor, min(c.ceiling, int(c.budget_ms / 1000 * rate)))

    def _capacity_rate(self, now: float, rate: float) -> float:
        """The estimated commits/s the network gives this endorser (under the lock): the
        windowed commit rate while the first window fills or when the window was validated
        (in flight at half the bound or more throughout), else the higher of it and the
        estimate so far. `rate` is the windowed commit rate at `now`."""
        self._see_in_flight(now)
        since = now - self._config.window_s
        if self._started > since or self._below_half_at < since or \
                rate > self._estimated_rate:
            self._estimated_rate = rate
        return self._estimated_rate

    def _see_in_flight(self, now: float) -> None:
        """Remember when the in-flight set was last seen below half the bound (under the
        lock): at each estimate, which every admission and every block asks for, and after
        forgetting (which admissions do after their estimate)."""
        if 2 * len(self._in_flight) < self._bound(self._estimated_rate):
            self._below_half_at = now

    def retry_after_ms(self) -> int:
        with self._lock:
            return self._retry_after_ms()

    def _retry_after_ms(self) -> int:
        """(Under the lock.)"""
        blocks = self._blocks
        interval_ms = ((blocks[-1] - blocks[0]) / (len(blocks) - 1) * 1000
                       if len(blocks) >= 2 else MIN_RETRY_MS)
        upper = max(MIN_RETRY_MS, self._config.budget_ms)
        return int(max(MIN_RETRY_MS, self._config.budget_ms / 2, min(upper, interval_ms)))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def held_by(self, member: str) -> int:
        """Transactions `member` has in flight."""
        with self._lock:
            return self._held[member]

    # -- admitting -----------------------------------------------------------------------

    def _share(self, member: str, capacity: int) -> int:
        """`member`'s fair share of `capacity`: an equal part for each member with
        something in flight, counting `member` itself (under the lock)."""
        active = len(self._held) + (member not in self._held)
        return -(-capacity // active)

    def _may_enter(self, member: str, capacity: int) -> bool:
        """Idle capacity is lent to whoever asks; below its share a member enters up to
        twice the capacity (under the lock)."""
        total = len(self._in_flight)
        return total < capacity or (total < 2 * capacity
                                    and self._held[member] < self._share(member, capacity))

    def check(self, kind: str = "options", member: str = "") -> None:
        """Raise Full if nothing more of `member`'s may enter now (for calls that lead to a
        transaction soon, e.g. RequestOptions), without reserving anything."""
        capacity = self.capacity()
        with self._lock:
            self._forget(self._clock())
            if not self._may_enter(member, capacity):
                REFUSED.labels(kind).inc()
                REFUSED_BY_MEMBER.labels(member or "unknown").inc()
                raise self._full(member, capacity)
        ADMITTED.labels(kind).inc()

    def admit(self, tx_ids: Iterable[str], kind: str = "submit",
              member: str = "") -> list[Admitted]:
        """Admit `member`'s transactions in order while it may enter. A tx id already in
        flight is let through again without counting twice (a client's retry of the same
        envelope is idempotent downstream); the caller releases only what was counted
        NEW."""
        capacity = self.capacity()
        results: list[Admitted] = []
        with self._lock:
            now = self._clock()
            self._forget(now)
            for tx_id in tx_ids:
                if tx_id in self._in_flight:
                    results.append(Admitted.AGAIN)
                elif self._may_enter(member, capacity):
                    self._in_flight[tx_id] = (now, member)
                    self._held[member] += 1
                    results.append(Admitted.NEW)
                else:
                    results.append(Admitted.REFUSED)
            IN_FLIGHT.set(len(self._in_flight))
            self._show_held([member])
        admitted = sum(1 for r in results if r is not Admitted.REFUSED)
        if admitted:
            ADMITTED.labels(kind).inc(admitted)
        if admitted < len(results):
            REFUSED.labels(kind).inc(len(results) - admitted)
            REFUSED_BY_MEMBER.labels(member or "unknown").inc(len(results) - admitted)
        return results

    def release(self, tx_id: str) -> None:
        """The transaction was not acknowledged by any orderer (or refused here after
        admission): it is not in flight."""
        with self._lock:
            member = self._drop(tx_id)
            if member is not None:
                self._show_held([member])
            IN_FLIGHT.set(len(self._in_flight))

    def full_error(self, member: str = "") -> Full:
        capacity = self.capacity()
        with self._lock:
            return self._full(member, capacity)

    def _full(self, member: str, capacity: int) -> Full:
        return Full(len(self._in_flight), capacity, self._retry_after_ms(), member,
                    self._held[member], self._share(member, capacity))

    def _drop(self, tx_id: str) -> str | None:
        """No longer in flight; its member, None if it was not in flight (under the lock;
        the caller updates HELD)."""
        entry = self._in_flight.pop(tx_id, None)
        if entry is None:
            return None
        member = entry[1]
        self._held[member] -= 1
        if not self._held[member]:
            del self._held[member]  # no longer active: the others' shares grow
        return member

    def _show_held(self, members: Iterable[str]) -> None:
        for member in members:
            HELD.labels(member or "unknown").set(self._held[member])

    # -- observing commits ---------------------------------------------------------------

    def on_block(self, tx_ids: Iterable[str], blocks: int = 1) -> None:
        """The ledger followed committed these transactions (valid or not), in `blocks`
        blocks read together."""
        with self._lock:
            now = self._clock()
            mine = 0
            members: set[str] = set()
            for tx_id in tx_ids:
                member = self._drop(tx_id)
                if member is not None:
                    members.add(member)
                    mine += 1
            self._show_held(members)
            if mine:
                self._commits.append((now, mine))
                self._committed_in_window += mine
            self._blocks.extend([now] * blocks)  # the mean interval spans every block
            rate = self._windowed_rate(now)
            capacity = self._bound(self._capacity_rate(now, rate))
            IN_FLIGHT.set(len(self._in_flight))
        COMMIT_RATE.set(rate)
        CAPACITY.set(capacity)

    def _expire_commits(self, now: float) -> None:
        while self._commits and self._commits[0][0] < now - self._config.window_s:
            self._committed_in_window -= self._commits.popleft()[1]

    def _forget(self, now: float) -> None:
        limit = now - self._config.forget_after_s
        forgot = False
        while self._in_flight:
            tx_id, (at, _) = next(iter(self._in_flight.items()))
            if at >= limit:
                break
            self._show_held([m for m in [self._drop(tx_id)] if m is not None])
            FORGOTTEN.inc()
            forgot = True
        if forgot:
            self._see_in_flight(now)


def add_flags(parser: argparse.ArgumentParser) -> None:
    d = AdmissionConfig()
    parser.add_argument("--admission-latency-budget-ms", type=int, default=d.budget_ms,
                        help="admit only what the network commits within this many ms "
                             "(in flight <= budget x observed commit rate); 0: off")
    parser.add_argument("--admission-floor", type=int, default=d.floor,
                        help="transactions always admitted in flight, whatever the estimate")
    parser.add_argument("--admission-ceiling", type=int, default=d.ceiling,
                        help="transactions never exceeded in flight, whatever the estimate")
    parser.add_argument("--admission-window-s", type=float, default=d.window_s,
                        help="seconds of commits the commit-rate estimate covers")


def config_from(args: argparse.Namespace) -> AdmissionConfig:
    return AdmissionConfig(budget_ms=args.admission_latency_budget_ms,
                           floor=args.admission_floor, ceiling=args.admission_ceiling,
                           window_s=args.admission_window_s)
