"""Following a ledger another process commits: an endorser reading its own organisation's
committer's LMDB (same host or pod) instead of keeping a replica of its own.

A replica re-executes every block (signatures, rules, a synced write): about a quarter of
an endorser's CPU, and a Deliver stream on an orderer (docs/performance.md). The committer of
the same organisation has done exactly that work and written the result; an organisation
trusts its own nodes, so its endorser may read that ledger (LMDB serves readers in other
processes from the same files, each read transaction one committed moment) and only learn
what was committed (`Ledger.follow_stored`), for its book cache and admission control.
Nothing of another organisation is trusted more than before: the committer judged every
block and transaction by the shared rules.

The thread looks at the store's chain height (one read transaction, a few microseconds)
every `poll` seconds after a block, backing off to `IDLE_POLL` while nothing arrives; what
arrived since the last look is passed on as one result, with the snapshot it was read from
(so the book cache applies it against exactly that state, however far the committer has
gone since). It never stops by itself, and never serves stale state silently:

- a read that fails (the store unreadable, a map resized by a committer restarted with a
  larger `--lmdb-map-gib`), or a store that is not the chain followed so far (lower, or not
  chaining on), is logged, counted in
  `gridledger_ledger_follower_failures_total{reason="read_error"}`, reported through
  `on_health(False, why)` and retried with backoff;
- every `watch_after` seconds its watch thread asks `broken()` (the endorser: were its
  files replaced?), a reason never cleared; and `probe(height)` once (the endorser: does an
  orderer hold the next block final, with a valid proof, and since when?), which gives two
  verdicts from that one look at the orderers:
  - the stall: used only while no block has arrived for `watch_after` seconds; the same
    reason twice in a row at one height reports `on_health(False, reason)`;
  - the lag (the next block final at an orderer and stamped more than `MAX_LAG` seconds ago
    by this node's clock): a committer that writes, but slower than the orderers decide (a
    slow disk, a starved process), leaves the endorser simulating against state that much
    behind. Found on two ticks in a row (one is the moment before the committer writes a
    block that was slow to agree: a locked block re-proposed after round changes keeps its
    first stamp), it reports `on_health(False, reason)`, for as long as every tick finds it
    again.

A read that works again ends a read error; a block read ends a stall; any tick that does
not find the lag again ends a lag (also one that cannot ask the orderers: a lag is only
ever reported on evidence, so an orderer that cannot be asked cannot keep a node down)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import lmdb

from gridledger_core.ledger.follower import (
    FOLLOWER_FAILURES,
    MAX_ERROR_BACKOFF,
    Follower,
    FollowerHealth,
    HealthCallback,
    pass_on,
    publish_tip,
)
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.ledger.orderer_probe import Verdicts

log = logging.getLogger(__name__)

DEFAULT_POLL = 0.002  # seconds between looks right after a block: it is seen within that
IDLE_POLL = 0.02  # ... growing to this while nothing arrives (an idle thread wakes 50 times/s)
DEFAULT_WATCH_AFTER = 5.0  # seconds without a block before asking `stalled`, and between asks
class StoreFollower(Follower):
    def __init__(self, ledger: Ledger, on_commit: Callable[[CommitResult], None] | None = None,
                 on_health: HealthCallback | None = None, *,
                 probe: Callable[[int], Verdicts] | None = None,
                 broken: Callable[[], str] | None = None, poll: float = DEFAULT_POLL,
                 watch_after: float = DEFAULT_WATCH_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._on_commit = on_commit
        self._probe = probe
        self._broken = broken
        self._poll = poll
        self._watch_after = watch_after
        self._clock = clock
        self._lock = threading.Lock()
        self._last_block = clock()
        self._read_error = ""  # why the last read failed
        self._stall = ""  # why the ledger read is stale, as `stalled` said twice in a row
        self._last_answer: tuple[int, str] = (-1, "")  # the last stall verdict: height, reason
        self._lag = ""  # why the ledger read lags the orderers, found on two ticks in a row
        self._lag_said = False  # the last tick found a lag
        self._broken_why = ""  # why the files read can no longer be trusted (never cleared)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name="store-follower", daemon=True),
            threading.Thread(target=self._watch, name="store-watch", daemon=True)]
        self._health = FollowerHealth("store follower", ledger, on_health)
        publish_tip(ledger.chain)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.1
        wait = self._poll
        while not self._stop.is_set():
            try:
                followed = self.step()
            except Exception as exc:  # never let the thread die behind SERVING health
                FOLLOWER_FAILURES.labels("read_error").inc()
                log.exception("reading the committer's ledger failed at height %d; retrying",
                              self._ledger.height)
                advice = ("; the committer's map grew: restart this endorser"
                          if isinstance(exc, lmdb.MapResizedError) else "")
                self._report(read_error=f"reading the committer's ledger failed at height "
                                        f"{self._ledger.height}: {type(exc).__name__}: {exc}"
                                        f"{advice}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_ERROR_BACKOFF)
                continue
            backoff = 0.1
            if followed:
                wait = self._poll  # the next look soon: blocks come in bursts
            else:
                self._stop.wait(wait)
                wait = min(wait * 2, max(IDLE_POLL, self._poll))

    def step(self) -> bool:
        """Take what the store holds beyond this height, if anything: True when a block was
        taken. A read that worked ends a read error; a block ends a stall."""
        taken = self._ledger.follow_stored(self._pass_on)
        if taken:
            with self._lock:
                self._last_block = self._clock()
                self._stall, self._last_answer = "", (-1, "")
        if taken or self._read_error:  # nothing to report on an empty look (500 a second)
            self._report(read_error="")
        return bool(taken)

    def _watch(self) -> None:
        """Its own thread: a probe may wait on orderers, never on the store's next block."""
        while not self._stop.wait(self._watch_after):
            try:
                self.watch_once()
            except Exception:  # the watch must outlive a bug: else staleness goes unseen
                log.exception("watching the committer's ledger failed; watching on")

    def watch_once(self) -> None:
        """Every tick, `broken` (files replaced: never cleared, whatever blocks come), and one
        look at the orderers (`probe`) for both verdicts. Its lag counts every tick: found on
        two ticks in a row it is reported until a tick does not find it (also one that cannot
        tell, or whose probe failed: a lag is only ever reported on evidence). Its stall counts
        only after `watch_after` seconds without a block: the same reason twice in a row at
        the same height is a stall (not the moment between an orderer finalising a block and
        the committer writing it); "" ends one; None (orderers unreachable) keeps the verdict
        as it is."""
        if self._broken is not None and not self._broken_why:
            self._broken_why = self._broken()
            if self._broken_why:
                self._report()
        if self._probe is None:
            return
        with self._lock:
            height = self._ledger.height
        try:
            verdicts: Verdicts | None = self._probe(height)
        except Exception:  # a probe's failure says nothing about the ledger
            log.exception("could not tell whether the committer's ledger is stale or lags")
            verdicts = None
        with self._lock:
            lag = (verdicts.lag if verdicts is not None else None) or ""
            self._lag = lag if lag and self._lag_said else ""
            self._lag_said = bool(lag)
            blocks_come = self._clock() - self._last_block < self._watch_after
            why = None if verdicts is None or blocks_come else verdicts.stall
            # None: cannot tell; a block that came meanwhile ends a stall by itself
            if why is not None and height == self._ledger.height:
                if not why:
                    self._stall = ""
                elif self._last_answer == (height, why):
                    self._stall = why
                self._last_answer = (height, why)
        self._report()

    def _report(self, read_error: str | None = None) -> None:
        # Set under the lock: the two threads must not land their verdicts in the other
        # order than they formed them (the callback does not block and never calls back).
        with self._lock:
            if read_error is not None:
                self._read_error = read_error
            why = self._broken_why or self._read_error or self._stall or self._lag
            self._health.set(not why, why)

    def _pass_on(self, result: CommitResult) -> None:
        publish_tip(self._ledger.chain)
        pass_on(result, self._on_commit)
