"""Following a ledger another process commits: an endorser reading its own organisation's
committer's LMDB (same host or pod) instead of keeping a replica of its own.

A replica re-executes every block (signatures, rules, a synced write): measured at 15-27 % of
an endorser's CPU and a Deliver stream on an orderer (docs/performance.md). The committer of
the same organisation has done exactly that work and written the result; an organisation
trusts its own nodes, so its endorser may read that ledger (LMDB serves readers in other
processes from the same files, each read transaction one committed moment) and only learn,
block by block, what was committed (`Ledger.follow_stored`) for its book cache and admission
control. Nothing of another organisation is trusted more than before: the committer judged
every block and transaction by the shared rules.

The thread polls the store's chain height (one read transaction, a few microseconds) every
`poll` seconds when there is nothing new. It never stops by itself: a failure to read (the
committer's store gone, a map resized by a restart with a larger `--lmdb-map-size`) is
logged, counted in `gridledger_ledger_follower_failures_total{reason="read_error"}`,
reported through `on_health(False, why)` and retried with backoff; the first block read
afterwards reports `on_health(True, "")`. Whether the committer itself keeps up with the
orderers is its own health (a pod is ready only when both containers are)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gridledger_core.ledger.follower import (
    FOLLOWER_FAILURES,
    MAX_ERROR_BACKOFF,
    FollowerHealth,
    HealthCallback,
    pass_on,
    publish_tip,
)
from gridledger_core.ledger.ledger import CommitResult, Ledger

log = logging.getLogger(__name__)

DEFAULT_POLL = 0.002  # seconds between looks at an unchanged store: a block is seen within it


class StoreFollower:
    def __init__(self, ledger: Ledger, on_commit: Callable[[CommitResult], None] | None = None,
                 on_health: HealthCallback | None = None, poll: float = DEFAULT_POLL) -> None:
        self._ledger = ledger
        self._on_commit = on_commit
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-follower", daemon=True)
        self._health = FollowerHealth("store follower", ledger, on_health)
        publish_tip(ledger.chain)

    @property
    def healthy(self) -> bool:
        return self._health.healthy

    @property
    def problem(self) -> str:
        """Why the follower is not healthy ("" when it is)."""
        return self._health.problem

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                followed = self.step()
            except Exception as exc:  # never let the thread die behind SERVING health
                FOLLOWER_FAILURES.labels("read_error").inc()
                log.exception("reading the committer's ledger failed at height %d; retrying",
                              self._ledger.height)
                self._health.set(False, f"reading the committer's ledger failed at height "
                                        f"{self._ledger.height}: {type(exc).__name__}: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_ERROR_BACKOFF)
                continue
            backoff = 0.1
            if not followed:
                self._stop.wait(self._poll)

    def step(self) -> bool:
        """Take the next stored block, if any: True when one was taken."""
        result = self._ledger.follow_stored()
        if not self.healthy:  # the store was read again
            self._health.set(True, "")
        if result is None:
            return False
        publish_tip(self._ledger.chain)
        pass_on(result, self._on_commit)
        return True
