"""Admission control: the endorser takes no more than the network commits within a latency
budget, and refuses the rest at once (RESOURCE_EXHAUSTED with a retry hint).

The quantity bounded is this endorser's *in flight*: transactions it admitted (being checked,
endorsed, forwarded) or that an orderer acknowledged and its own ledger replica has not yet
seen in a block. Every queue between a client and the ledger (the endorser's handler and
broadcaster queues, the orderers' pools, the blocks being agreed) holds only in-flight
transactions, so bounding it bounds them all.

The bound is measured, not configured (Little's law: in flight = rate x time in flight):

    capacity = clamp(budget x observed commit rate, floor, ceiling)

where the observed commit rate is how many of *this endorser's* transactions its replica saw
committed (valid or not) per second over the last `window` seconds. At saturation the in-flight
set drains at the commit rate, so a transaction admitted at the bound waits about `budget`
before its commit. The estimate bootstraps itself: with only `floor` in flight the commit
rate is floor / (unloaded latency), and the bound becomes budget / (unloaded latency) times
that, so it grows by that factor per window until the network, not the bound, limits the rate
(which needs a budget above the unloaded submit->commit latency, a few hundred ms). Counting
only this endorser's own transactions shares the network between several endorsers in
proportion to what each gets committed, instead of each claiming the whole rate.

The retry hint is half the budget (by then about half the in-flight set has committed and
been replaced; a sooner retry would mostly be refused again, and a refusal still costs a gRPC
call), or the mean interval between the replica's blocks (when slots free up) if that is
longer, at most the budget; at least `MIN_RETRY_MS`. An acknowledged transaction that
never shows up in a block (lost by a faulty orderer: the client resubmits it) stops counting
after `forget_after` seconds, so the bound cannot leak shut.
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

ADMITTED = Counter("gridledger_endorser_admission_admitted",
                   "Transactions admitted by admission control (also RequestOptions calls).",
                   ["kind"])
REFUSED = Counter("gridledger_endorser_admission_refused",
                  "Calls refused RESOURCE_EXHAUSTED because the in-flight bound was reached.",
                  ["kind"])
FORGOTTEN = Counter("gridledger_endorser_admission_forgotten",
                    "Acknowledged transactions never seen committed within forget_after "
                    "(they stop counting as in flight).")
CAPACITY = Gauge("gridledger_endorser_admission_capacity",
                 "Estimated capacity: transactions this endorser may have in flight.")
IN_FLIGHT = Gauge("gridledger_endorser_admission_in_flight",
                  "Transactions admitted and not yet seen committed by the replica.")
COMMIT_RATE = Gauge("gridledger_endorser_admission_commit_rate",
                    "This endorser's transactions committed per second (observed, windowed).")

DEFAULT_BUDGET_MS = 1_000
DEFAULT_FLOOR = 64
DEFAULT_CEILING = 20_000
DEFAULT_WINDOW_S = 5.0
MIN_RETRY_MS = 20


@dataclass(frozen=True)
class AdmissionConfig:
    budget_ms: int = DEFAULT_BUDGET_MS  # 0: admission control off (no bound but the ceiling)
    floor: int = DEFAULT_FLOOR
    ceiling: int = DEFAULT_CEILING
    window_s: float = DEFAULT_WINDOW_S
    forget_after_s: float = 60.0


class Admitted(enum.Enum):
    NEW = "new"  # admitted and counted in flight
    AGAIN = "again"  # its tx id is already in flight: let through, not counted twice
    REFUSED = "refused"


class Full(Exception):
    """The in-flight bound is reached: refuse with RESOURCE_EXHAUSTED, retry after the hint."""

    def __init__(self, in_flight: int, capacity: int, retry_after_ms: int) -> None:
        super().__init__(f"the endorser is at its admission bound ({in_flight} transactions in "
                         f"flight, capacity {capacity}: what the network commits within the "
                         f"latency budget); retry the same envelope after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class Admission:
    def __init__(self, config: AdmissionConfig = AdmissionConfig(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        # tx id -> when admitted; insertion order is admission order (for forgetting).
        self._in_flight: dict[str, float] = {}
        self._commits: collections.deque[tuple[float, int]] = collections.deque()  # (at, n)
        self._committed_in_window = 0
        self._blocks: collections.deque[float] = collections.deque(maxlen=32)
        self._started = clock()
        CAPACITY.set(self.capacity())

    # -- estimate ------------------------------------------------------------------------

    def commit_rate(self) -> float:
        """This endorser's transactions committed per second over the last window (over
        the time since start while that is shorter)."""
        with self._lock:
            now = self._clock()
            self._expire_commits(now)
            span = min(self._config.window_s, max(now - self._started, 1e-3))
            return self._committed_in_window / span

    def capacity(self) -> int:
        c = self._config
        if c.budget_ms <= 0:
            return c.ceiling
        estimate = int(c.budget_ms / 1000 * self.commit_rate())
        return max(c.floor, min(c.ceiling, estimate))

    def retry_after_ms(self) -> int:
        with self._lock:
            blocks = list(self._blocks)
        interval_ms = ((blocks[-1] - blocks[0]) / (len(blocks) - 1) * 1000
                       if len(blocks) >= 2 else MIN_RETRY_MS)
        upper = max(MIN_RETRY_MS, self._config.budget_ms)
        return int(max(MIN_RETRY_MS, self._config.budget_ms / 2, min(upper, interval_ms)))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- admitting -----------------------------------------------------------------------

    def check(self, kind: str = "options") -> None:
        """Raise Full if nothing more may enter now (for calls that lead to a transaction
        soon, e.g. RequestOptions), without reserving anything."""
        capacity = self.capacity()
        with self._lock:
            self._forget(self._clock())
            in_flight = len(self._in_flight)
        if in_flight >= capacity:
            REFUSED.labels(kind).inc()
            raise Full(in_flight, capacity, self.retry_after_ms())
        ADMITTED.labels(kind).inc()

    def admit(self, tx_ids: Iterable[str], kind: str = "submit") -> list[Admitted]:
        """Admit transactions in order while there is room. A tx id already in flight is let
        through again without counting twice (a client's retry of the same envelope is
        idempotent downstream); the caller releases only what was counted NEW."""
        capacity = self.capacity()
        results: list[Admitted] = []
        with self._lock:
            now = self._clock()
            self._forget(now)
            for tx_id in tx_ids:
                if tx_id in self._in_flight:
                    results.append(Admitted.AGAIN)
                elif len(self._in_flight) < capacity:
                    self._in_flight[tx_id] = now
                    results.append(Admitted.NEW)
                else:
                    results.append(Admitted.REFUSED)
            IN_FLIGHT.set(len(self._in_flight))
        admitted = sum(1 for r in results if r is not Admitted.REFUSED)
        if admitted:
            ADMITTED.labels(kind).inc(admitted)
        if admitted < len(results):
            REFUSED.labels(kind).inc(len(results) - admitted)
        return results

    def release(self, tx_id: str) -> None:
        """The transaction was not acknowledged by any orderer (or refused here after
        admission): it is not in flight."""
        with self._lock:
            self._in_flight.pop(tx_id, None)
            IN_FLIGHT.set(len(self._in_flight))

    def full_error(self) -> Full:
        return Full(len(self._in_flight), self.capacity(), self.retry_after_ms())

    # -- observing commits ---------------------------------------------------------------

    def on_block(self, tx_ids: Iterable[str]) -> None:
        """The replica committed a block with these transactions (valid or not)."""
        with self._lock:
            now = self._clock()
            mine = 0
            for tx_id in tx_ids:
                if self._in_flight.pop(tx_id, None) is not None:
                    mine += 1
            if mine:
                self._commits.append((now, mine))
                self._committed_in_window += mine
            self._blocks.append(now)
            self._expire_commits(now)
            IN_FLIGHT.set(len(self._in_flight))
        rate = self.commit_rate()
        COMMIT_RATE.set(rate)
        CAPACITY.set(self.capacity())

    def _expire_commits(self, now: float) -> None:
        while self._commits and self._commits[0][0] < now - self._config.window_s:
            self._committed_in_window -= self._commits.popleft()[1]

    def _forget(self, now: float) -> None:
        limit = now - self._config.forget_after_s
        while self._in_flight:
            tx_id, at = next(iter(self._in_flight.items()))
            if at >= limit:
                return
            del self._in_flight[tx_id]
            FORGOTTEN.inc()


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
