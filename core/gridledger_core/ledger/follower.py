"""Following the orderer cluster: pull final blocks with Deliver and commit them to a ledger.

Used by committers and by endorsers' ledger replicas. Fails over to the next orderer when the
current one is unreachable, sends a block that does not verify, or goes quiet for longer than
`idle_timeout` (a frozen or lagging orderer); the next orderer may be further ahead.

An orderer of a hostile member can also withhold blocks, or hand them out one at a time just
often enough never to go quiet, which left a node as far behind the cluster as it liked (a
committer, and with it its organisation's endorser, admission control and clients). So while
the follower waits on its stream (for PROBE_AFTER_S, or at once when the last block it
committed was already older than MAX_STREAM_LAG_S), its lag watch asks the other orderers for
the block it waits for (`OrdererProbe.held`: final with a valid proof, so a made-up block lures
nobody). One that holds it, decided more than MAX_STREAM_LAG_S ago by its stamp, is followed
instead: `gridledger_ledger_lagging_orderer_failovers_total{orderer}` counts the orderer left.
An honest orderer delivers a block within moments of the cluster deciding it, and a stamp is at
most the cluster's clock skew (5 s) old then, so MAX_STREAM_LAG_S (10 s) bounds how far behind
an orderer can keep a node, without leaving honest ones.

It never stops by itself. A failure it does not expect (the ledger raising anything but
BlockRejected, which no content should cause; see `Ledger._execute`) is logged with its
traceback, counted in `gridledger_ledger_follower_failures_total{reason}`, reported through
`on_health(False, why)` (the node's health goes NOT_SERVING) and retried with backoff; so is
every orderer sending a block this node refuses. The first block committed afterwards reports
`on_health(True, "")`. A height frozen by this node's own failure is therefore never silent
behind SERVING. One frozen because no orderer can be reached (all down, or partitioned away)
is not the node's fault: it stays SERVING (its reads are valid as of its height, and a
restart by its liveness probe would not help, only delay its return) and counts every
failed stream (`{reason="deliver"}`). The alerts catch it: the orderers down
(GridLedgerOrdererQuorumLost), the node cut off from orderers that go on making blocks
(GridLedgerCommitterBehindOrderers, once it is 10 blocks behind for 5 minutes), and the node
cut off from every orderer for 5 minutes, an idle cluster's too
(GridLedgerNodeCutOffFromOrderers, from `..._follower_orderer_contact_timestamp_seconds`:
an idle cluster's stream delivers nothing, so a stream the orderer answered with its
opening header counts; one refused after the handshake does not).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc
from prometheus_client import Counter, Gauge, Histogram

from gridledger.common.v1 import block_pb2, ledger_pb2
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.errors import code_name
from gridledger_core.ledger.ledger import BlockRejected, CommitResult, Ledger
from gridledger_core.ledger.orderer_probe import OrdererProbe
from gridledger_core.rpc.errors import describe_rpc_error
from gridledger_core.rpc.height_notifier import STREAM_OPEN
from gridledger_core.rpc.tls import TlsFiles, secure_channel

log = logging.getLogger(__name__)

HEIGHT = Gauge("gridledger_ledger_height", "Number of blocks committed to this node's ledger.")
COMMIT_SECONDS = Histogram("gridledger_ledger_block_commit_seconds",
                           "Time to verify, apply and write one block.",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                    2.5, 5))
# The first 6 bytes of the tip's block hash and state root as integers (exact in a float64),
# so an alert can compare committers at one height without unbounded labels.
LAST_HASH_PREFIX = Gauge("gridledger_ledger_last_block_hash_prefix",
                         "First 6 bytes of the last block's hash, as a big-endian integer.")
STATE_ROOT_PREFIX = Gauge("gridledger_ledger_state_root_prefix",
                          "First 6 bytes of the state root after the last block, as an integer.")
SUBMIT_TO_COMMIT = Histogram("gridledger_ledger_submit_to_commit_seconds",
                             "From a transaction's header timestamp to its block's commit.",
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
TRANSACTIONS = Counter("gridledger_ledger_transactions",
                       "Transactions committed, by validation code.", ["code"])
REJECTED_BLOCKS = Counter("gridledger_ledger_rejected_blocks",
                          "Blocks refused whole, by the orderer that sent them.", ["orderer"])
LAGGING_FAILOVERS = Counter(
    "gridledger_ledger_lagging_orderer_failovers",
    "Failovers from an orderer whose stream kept this node waiting for a block another "
    "orderer held final, decided more than the lag bound ago, by the orderer left.", ["orderer"])
FAILOVERS = Counter("gridledger_ledger_orderer_failovers",
                    "Times this node switched to another orderer.")
# reason: deliver (the stream failed), rejected_block (an orderer sent a block this node
# refuses), commit_error (the ledger raised unexpectedly: a bug, or storage), on_commit (a
# listener of committed blocks raised; the block itself is committed), read_error (an
# endorser could not read its committer's ledger: store_follower.py).
FOLLOWER_FAILURES = Counter("gridledger_ledger_follower_failures",
                            "Failures of the block follower, by reason.", ["reason"])
FOLLOWER_HEALTHY = Gauge("gridledger_ledger_follower_healthy",
                         "1 while the block follower can commit, 0 while it is failing.")
ORDERER_CONTACT = Gauge("gridledger_ledger_follower_orderer_contact_timestamp_seconds",
                        "When the block follower last reached an orderer (Unix time): a block "
                        "delivered, or a Deliver stream the orderer answered (its opening "
                        "header, on an idle cluster too); its start before the first; 0 in a "
                        "process without a block follower.")

# Called with (healthy, why) when the follower's health changes; nodes set their gRPC
# health status from it (NodeServer.set_serving).
HealthCallback = Callable[[bool, str], None]
MAX_ERROR_BACKOFF = 30.0
# The lag watch (BlockFollower): how often it looks, how long the stream may keep the follower
# waiting before it asks the other orderers, and how old (by its stamp) the block waited for
# may be at another orderer before that one is followed instead: above the cluster's clock
# skew (a primary may stamp 5 s behind honest clocks), far below the idle timeout.
LAG_CHECK_S = 1.0
PROBE_AFTER_S = 1.0
MAX_STREAM_LAG_S = 10.0


class FollowerHealth:
    """A follower's health: why it is unhealthy ("" while healthy), reported (log, gauge,
    `on_health`) only when it changes."""

    def __init__(self, what: str, ledger: Ledger, on_health: HealthCallback | None) -> None:
        self._what = what
        self._ledger = ledger
        self._on_health = on_health
        self._lock = threading.Lock()
        self.problem = ""
        FOLLOWER_HEALTHY.set(1)

    @property
    def healthy(self) -> bool:
        return not self.problem

    def set(self, healthy: bool, why: str) -> None:
        # Reported under the lock: two threads reporting (a store follower's) must not land
        # their callbacks in the other order than their changes (the callback, the server's
        # set_serving, does not block and never calls back).
        with self._lock:
            was_healthy = not self.problem
            self.problem = "" if healthy else why
            if was_healthy == healthy:
                return
            FOLLOWER_HEALTHY.set(1 if healthy else 0)
            if healthy:
                log.info("%s recovered at height %d", self._what, self._ledger.height)
            else:
                log.error("%s unhealthy, node reports NOT_SERVING: %s", self._what, why)
            if self._on_health is not None:
                try:
                    self._on_health(healthy, why)
                except Exception:
                    log.exception("health callback failed")


class Follower:
    """Either ledger follower's health, as its node's callback was told it."""

    _health: FollowerHealth

    @property
    def healthy(self) -> bool:
        return self._health.healthy

    @property
    def problem(self) -> str:
        """Why the follower is not healthy ("" when it is)."""
        return self._health.problem


def publish_tip(chain: ledger_pb2.ChainState) -> None:
    HEIGHT.set(chain.height)
    LAST_HASH_PREFIX.set(int.from_bytes(chain.last_block_hash[:6] or bytes(6), "big"))
    STATE_ROOT_PREFIX.set(int.from_bytes(chain.state_root[:6], "big"))


def pass_on(result: CommitResult, on_commit: Callable[[CommitResult], None] | None) -> None:
    """After a block is committed: its transactions' codes and latency, then the listener
    (whose failure must not stop the follower: the block is committed)."""
    for code in result.codes:
        TRANSACTIONS.labels(_code_label(code)).inc()
    now = time.time()
    for timestamp in result.tx_timestamps:
        SUBMIT_TO_COMMIT.observe(max(0.0, now - timestamp))
    if on_commit is not None:
        try:
            on_commit(result)
        except Exception:
            FOLLOWER_FAILURES.labels("on_commit").inc()
            log.exception("on_commit listener failed for block %d", result.number)


class BlockFollower(Follower):
    def __init__(self, ledger: Ledger, orderers: Sequence[tuple[str, str]], tls: TlsFiles,
                 on_commit: Callable[[CommitResult], None] | None = None,
                 idle_timeout: float = 30.0, on_health: HealthCallback | None = None) -> None:
        """`orderers` is a list of (orderer id, address)."""
        if not orderers:
            raise ValueError("a follower needs at least one orderer address")
        self._ledger = ledger
        self._orderers = list(orderers)
        self._tls = tls
        self._on_commit = on_commit
        self._idle_timeout = idle_timeout
        self._index = {name: i for i, (name, _) in enumerate(self._orderers)}
        # The lag watch's look at the other orderers, blocks verified as the ledger does.
        self._probe = OrdererProbe(ledger, self._orderers, tls, block_verifier(ledger.genesis))
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name="block-follower", daemon=True),
            threading.Thread(target=self._watch_lag, name="block-lag-watch", daemon=True)]
        self._current = 0
        self._call: grpc.Future | None = None
        # The stream's state for the lag watch: since when the follower waits on it (None
        # while it commits), how old the last block it committed was, and where to go next.
        self._waiting_since: float | None = None
        self._last_block_age = 0.0
        self._switch_to: int | None = None
        ORDERER_CONTACT.set_to_current_time()  # a follower starting gets the alert's grace
        self._health = FollowerHealth("block follower", ledger, on_health)
        self._rejected_in_a_row = 0
        publish_tip(ledger.chain)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        self._probe.close()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            orderer_id, address = self._orderers[self._current]
            height = self._ledger.height
            try:
                progressed = self._follow(orderer_id, address)
                backoff = 0.1 if progressed else min(backoff * 2, 2.0)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                FOLLOWER_FAILURES.labels("deliver").inc()
                log.info("deliver from %s failed: %s", orderer_id, describe_rpc_error(exc))
                backoff = min(backoff * 2, 2.0)
            except BlockRejected as exc:
                REJECTED_BLOCKS.labels(orderer_id).inc()
                FOLLOWER_FAILURES.labels("rejected_block").inc()
                log.error("refused a block from %s: %s", orderer_id, exc)
                self._rejected_in_a_row = (0 if self._ledger.height > height
                                           else self._rejected_in_a_row + 1)
                if self._rejected_in_a_row >= len(self._orderers):
                    # Every orderer in turn sent a block this node refuses: it cannot advance.
                    self._set_health(False, f"every orderer sends a block this node refuses at "
                                            f"height {self._ledger.height}: {exc}")
                    backoff = min(max(backoff * 2, 1.0), MAX_ERROR_BACKOFF)
            except Exception as exc:  # never let the thread die behind SERVING health
                if self._stop.is_set():
                    return
                FOLLOWER_FAILURES.labels("commit_error").inc()
                log.exception("block follower failed at height %d (orderer %s); retrying",
                              self._ledger.height, orderer_id)
                self._set_health(False, f"commit failed at height {self._ledger.height}: "
                                        f"{type(exc).__name__}: {exc}")
                backoff = min(max(backoff * 2, 1.0), MAX_ERROR_BACKOFF)
            if self._stop.is_set():
                return
            switch_to, self._switch_to = self._switch_to, None
            self._current = (switch_to if switch_to is not None
                             else (self._current + 1) % len(self._orderers))
            FAILOVERS.inc()
            self._stop.wait(backoff)

    def _set_health(self, healthy: bool, why: str) -> None:
        self._health.set(healthy, why)

    def _follow(self, orderer_id: str, address: str) -> bool:
        """Stream blocks from one orderer until it fails or goes quiet; True if any committed."""
        progressed = False
        with secure_channel(address, self._tls) as channel:
            stub = orderer_pb2_grpc.OrdererServiceStub(channel)
            call = stub.Deliver(orderer_pb2.DeliverRequest(start_number=self._ledger.height,
                                                           follow=True))
            self._call = call
            watchdog = _IdleWatchdog(call, self._idle_timeout)
            responses = iter(call)
            try:
                while not self._stop.is_set():
                    self._waiting_since = time.monotonic()
                    try:
                        response = next(responses)
                    except StopIteration:
                        break
                    finally:
                        self._waiting_since = None
                    watchdog.touch()
                    self._commit(response.block)
                    progressed = True
            finally:
                self._waiting_since = None
                watchdog.stop()
                call.cancel()
                # The orderer answered the stream (its opening header), though on an idle
                # cluster it delivered nothing: reached. Refused after the handshake (a role,
                # a member's share) or never connected: no header.
                if STREAM_OPEN in (call.initial_metadata() or ()):
                    ORDERER_CONTACT.set_to_current_time()
        return progressed

    def _watch_lag(self) -> None:
        """Its own thread: a look may wait on orderers, never on the stream's next block."""
        while not self._stop.wait(LAG_CHECK_S):
            try:
                self.watch_lag_once()
            except Exception:  # the watch must outlive a bug, or a withholding orderer wins
                log.exception("watching the followed orderer for lag failed; watching on")

    def watch_lag_once(self) -> None:
        """While the stream keeps the follower waiting (PROBE_AFTER_S, or at all when the last
        block it committed was older than MAX_STREAM_LAG_S), ask the other orderers for the
        block it waits for; follow the first that holds it final and decided it more than
        MAX_STREAM_LAG_S ago."""
        since = self._waiting_since
        if since is None or (time.monotonic() - since < PROBE_AFTER_S
                             and self._last_block_age <= MAX_STREAM_LAG_S):
            return
        current, height = self._current, self._ledger.height
        name = self._orderers[current][0]
        held = self._probe.held(height, skip=name)
        if not held or not held[0]:
            return
        holder, stamped = held
        age = time.time() - stamped
        if age <= MAX_STREAM_LAG_S or self._waiting_since is None \
                or (self._current, self._ledger.height) != (current, height):
            return  # not lagging, or the stream moved on meanwhile
        log.warning("orderer %s kept this node waiting for block %d, which %s holds final, "
                    "decided %.0f s ago: following %s", name, height, holder, age, holder)
        LAGGING_FAILOVERS.labels(name).inc()
        self._switch_to = self._index[holder]
        call = self._call
        if call is not None:
            call.cancel()

    def _commit(self, block: block_pb2.Block) -> None:
        start = time.perf_counter()
        result = self._ledger.commit(block)
        COMMIT_SECONDS.observe(time.perf_counter() - start)
        # Its stamp as the commit verified it (a block refused sets nothing).
        self._last_block_age = time.time() - result.block_time
        ORDERER_CONTACT.set_to_current_time()
        publish_tip(self._ledger.chain)
        self._rejected_in_a_row = 0
        if not self.healthy:
            self._set_health(True, "")
        pass_on(result, self._on_commit)


def _code_label(code: int) -> str:
    try:
        return code_name(code).lower()
    except ValueError:  # a code of a newer committer (mixed versions during an upgrade)
        return str(code)


class _IdleWatchdog:
    """Cancels a Deliver stream that delivers nothing for `timeout` seconds while blocks may
    exist elsewhere; an idle but healthy cluster just reconnects, which is cheap."""

    def __init__(self, call: grpc.Future, timeout: float) -> None:
        self._call = call
        self._timeout = timeout
        self._last = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(1.0):
            if time.monotonic() - self._last > self._timeout:
                self._call.cancel()
                return
