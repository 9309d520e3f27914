"""The orderer's event loop: the only thread that touches the consensus replica.

Inputs (client transactions, peer messages, timers) arrive on one inbox bounded in bytes
(`inbox.Inbox`); each input's actions are executed in order: Persist and Deliver first, in
one synced LMDB transaction, then sends and timers (the replica's durability rule).

Acknowledgement means durable: every client submission waiting in the inbox is taken at
once, and its transactions are written to this orderer's LMDB pool in the same synced
transaction as that input's Persist and Deliver actions (group commit: one fsync for every
API call waiting); only then are the waiting API calls released to answer OK. A restart
feeds the pool back to the replica (`start`); a block's transactions leave the pool in the
transaction that stores the block (`OrdererStore.apply`).
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import lottery, vrf
from gridledger_core.consensus.actions import (
    Action,
    Broadcast,
    Deliver,
    Evidence,
    Persist,
    Send,
    SetTimer,
)
from gridledger_core.consensus.certificate import ed25519_verifier
from gridledger_core.consensus.pool import TxPool
from gridledger_core.consensus.protocol import (
    DEFAULT_MAX_BATCH_WAIT,
    ChainTip,
    Dependencies,
    Replica,
    ReplicaConfig,
)
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, block_hash
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.checks import check_orderable
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.signing_identity import SigningIdentity
from gridledger_orderer.inbox import Inbox, Submission
from gridledger_orderer.limits import OrdererLimits
from gridledger_orderer.store import OrdererStore, tx_id_of
from gridledger_orderer.transport import Transport

log = logging.getLogger(__name__)

# While the last store write failed, how often an idle consensus loop tries a small one.
STORE_PROBE_S = 1.0
HEIGHT = Gauge("gridledger_orderer_height", "Final blocks held by this orderer.")
ROUND = Gauge("gridledger_orderer_round", "Consensus round at the current height.")
IS_PRIMARY = Gauge("gridledger_orderer_is_primary",
                   "1 when this orderer is the lottery primary of the current round.")
ROUND_CHANGES = Counter("gridledger_orderer_round_changes",
                        "Rounds entered above 0, each one a change of primary.")
PENDING = Gauge("gridledger_orderer_pending_transactions",
                "Transactions in this orderer's pool, waiting for a block.")
PENDING_BYTES = Gauge("gridledger_orderer_pending_bytes",
                      "Bytes of the transactions in this orderer's pool.")
FINALITY = Histogram("gridledger_orderer_block_finality_seconds",
                     "From the arrival here of a block's first transaction to its certificate.",
                     buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10))
PHASE_SECONDS = Histogram("gridledger_orderer_consensus_phase_seconds",
                          "Consensus phases as the primary sees them: prepare (proposal to "
                          "prepare certificate) and commit (prepare to commit certificate).",
                          ["phase"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
EQUIVOCATIONS = Counter("gridledger_orderer_equivocations",
                        "Conflicting signed statements detected, by the orderer that signed "
                        "them (evidence: gridctl orderer evidence).", ["orderer"])
BLOCK_TXS = Histogram("gridledger_orderer_block_transactions", "Transactions per final block.",
                      buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))
ACK_GROUP = Histogram("gridledger_orderer_ack_group_transactions",
                      "Transactions made durable (and acknowledged) by one synced write.",
                      buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000))
STORE_WRITE = Histogram("gridledger_orderer_store_write_seconds",
                        "One write of pool entries, votes and blocks by the consensus thread, "
                        "from building it to the synced commit's return (failed ones too); "
                        "the thread sends that step's messages only after it.",
                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                 0.05, 0.1, 0.25, 1))
INBOUND_DROPPED = Counter("gridledger_orderer_inbound_dropped",
                          "Consensus messages from a peer dropped on arrival, by reason: rate "
                          "(over its token bucket), queue (its inbox budget is full), pool "
                          "(transactions forwarded while the pool is at its byte limit).",
                          ["peer", "reason"])
RESTORED = Counter("gridledger_orderer_pool_restored",
                   "Acknowledged transactions fed back to the replica from the LMDB pool "
                   "on start.")

_SEEN_LIMIT = 200_000  # entries kept before the cache starts over
_SEEN_BYTES = 64 << 20  # bytes of keys kept before the cache starts over
_ARRIVALS_LIMIT = 200_000
_GROUP_BYTES = 8 << 20  # client transactions forwarded in one TxForward, at most


class Overloaded(Exception):
    """The inbox has no room for these transactions: the client should retry later."""


class NotDurable(Exception):
    """The transactions could not be written to the pool (or not in time)."""


class _Seen:
    """What this orderer knows about one transaction's bytes: the ordering verdict (None:
    admitted) and, when admitted, its tx id and the member it is charged to."""

    __slots__ = ("member", "tx_id", "verdict")

    def __init__(self, tx_id: bytes) -> None:
        self.tx_id = tx_id
        self.verdict: TxInvalid | None = None
        self.member = ""


@dataclass(frozen=True)
class OrderingParams:
    max_batch_txs: int = 500
    max_batch_bytes: int = 1 << 20
    max_batch_wait: float = DEFAULT_MAX_BATCH_WAIT
    round_timeout: float = 1.0


class PoolRoom:
    """What one Broadcast call may still add to the pool, its own additions counted: within
    the pool's bounds and, when the pool is past half full, within each member's share
    (pool.py)."""

    def __init__(self, pool: TxPool) -> None:
        self._pool = pool
        self._count: collections.Counter[str] = collections.Counter()
        self._bytes: collections.Counter[str] = collections.Counter()

    def take(self, member: str, size: int) -> bool:
        """Reserve room for one transaction of `member`'s, `size` bytes; False if none."""
        if not self._pool.room_for(member, count=self._count.total() + 1,
                                   size=self._bytes.total() + size,
                                   member_count=self._count[member] + 1,
                                   member_size=self._bytes[member] + size):
            return False
        self._count[member] += 1
        self._bytes[member] += size
        return True


class OrdererNode:
    def __init__(self, genesis: Genesis, identity: SigningIdentity, store: OrdererStore,
                 transport: Transport, params: OrderingParams,
                 on_deliver: Callable[[block_pb2.Block], None],
                 limits: OrdererLimits | None = None, *, durable_acks: bool = True,
                 ) -> None:
        """`durable_acks=False` is for bench/ordering.py only (to measure what durable
        acknowledgement costs): acknowledged transactions are then neither written to nor
        restored from the pool. No command-line flag sets it."""
        self._store = store
        self._transport = transport
        self._on_deliver = on_deliver
        self._membership = genesis.membership
        self.organization_count = len(genesis.organizations)  # members sharing every bound
        self.limits = limits = limits or OrdererLimits()
        self.max_tx_bytes = genesis.limits.max_tx_bytes
        self._durable = durable_acks
        # tx bytes -> _Seen: each admitted transaction is verified once per orderer,
        # although its id is needed on admission, forwarding, proposal, commit and storage.
        # Keyed by the bytes themselves (equal bytes, equal entry; Python's hash of ~1 KB is
        # cheaper than a sha256), which are the bytes the pool holds, so an entry costs little
        # more than its pool entry. Only admitted transactions are kept: refused or
        # undecodable bytes never reach a block, and a hostile sender can vary them at will,
        # so a cached verdict would save nothing it could not bypass while holding their
        # bytes (a flood of them once left 64 MiB of garbage here for good). An entry leaves
        # when its transaction is final, after which the tx id alone makes every later
        # arrival a duplicate. Bounded in entries and bytes: past either bound it starts over,
        # which only costs re-checks.
        self._seen: dict[bytes, _Seen] = {}
        self._seen_bytes = 0
        self._seen_lock = threading.Lock()
        self._arrivals: dict[bytes, float] = {}
        seed = identity.signer.seed()
        height = store.height
        if height == 0:
            tip = ChainTip(0, GENESIS_PREVIOUS_HASH, lottery.genesis_seed(genesis.hash))
        else:
            last = store.block(height - 1)
            last_seed = store.seed(height - 1)
            assert last is not None and last_seed is not None
            tip = ChainTip(height, block_hash(last.header), last_seed)
        config = ReplicaConfig(orderer_id=identity.name, orderers=genesis.orderer_keys,
                               max_batch_txs=params.max_batch_txs,
                               max_batch_bytes=params.max_batch_bytes,
                               max_batch_wait=params.max_batch_wait,
                               round_timeout=params.round_timeout,
                               max_pool_bytes=limits.pool_bytes)
        deps = Dependencies(
            sign=identity.signer.sign,
            verify_sig=ed25519_verifier(genesis.orderer_keys),
            vrf_prove=lambda alpha: vrf.prove(seed, alpha),
            vrf_verify=vrf.verify,
            validate_tx=self._validate_tx,
            tx_id_of=self.tx_id,
            get_block=store.block,
            is_final=lambda tx_id: self._store.is_final(tx_id),
            member_of=self.member_of,
        )
        self.replica = Replica(config, deps, tip, persisted=store.persisted())
        self._inbox = Inbox(limits.inbox_client_bytes, limits.inbox_peer_bytes)
        self._timers: list[tuple[float, str]] = []
        # Whether the last write to the store worked: an iteration that writes nothing does
        # not show that storage works again.
        self._store_ok = True
        self._store_probed = 0.0  # when _probe_store last wrote (monotonic)
        self._stop = threading.Event()
        # Told False while the consensus thread cannot work, True when it works again
        # (main.py: the server's health).
        self.on_health: Callable[[bool], None] = lambda serving: None
        self._thread = threading.Thread(target=self._run, name="consensus", daemon=True)
        self._last_round = 0
        # (height, round, phase that started, when) of the phase this primary is driving.
        self._phase: tuple[int, int, str, float] | None = None
        HEIGHT.set(height)

    # -- inputs from other threads ---------------------------------------------------------

    def submit_transactions(self, txs: list[bytes]) -> Submission:
        """Hand transactions the API admitted (``admit`` passed, or pending already) to the
        consensus thread; `wait_durable` then blocks until they are in this orderer's LMDB
        pool. The replica pools them even above the pool's capacity, which the API checks
        first, so an acknowledged transaction is never dropped for lack of room. Raises
        Overloaded when the inbox has no room for their bytes."""
        submission = Submission(txs)
        if not self._inbox.put_submission(submission):
            raise Overloaded(f"{self._inbox.client_bytes()} bytes of transactions wait for "
                             "ordering")
        now = time.monotonic()
        if len(self._arrivals) >= _ARRIVALS_LIMIT:  # ids that never became final
            self._arrivals.clear()
        for tx in txs:
            self._arrivals.setdefault(self.tx_id(tx), now)
        if not self._durable:
            submission.finish()
        return submission

    @staticmethod
    def wait_durable(submission: Submission, timeout: float = 10.0) -> None:
        """Block until the submission's transactions are durable; NotDurable if they are not
        within `timeout` seconds (they may still become so: the client retries, and a retry
        is answered `duplicate`)."""
        if not submission.done.wait(timeout):
            raise NotDurable(f"transactions not yet durable after {timeout:g} s")
        if submission.error is not None:
            raise NotDurable(submission.error)

    def receive(self, sender: str, message: consensus_pb2.ConsensusMessage, size: int) -> bool:
        """A peer's message, `size` bytes; False (and counted) when it was dropped."""
        pool = self.replica.pool
        if message.HasField("tx_forward") and pool.total_bytes + size > pool.max_bytes:
            INBOUND_DROPPED.labels(sender, "pool").inc()
            return False
        if not self._inbox.put_message(sender, message, size):
            INBOUND_DROPPED.labels(sender, "queue").inc()
            return False
        return True

    def pool_room(self) -> PoolRoom:
        """What one Broadcast call may add to the pool (the API's check)."""
        return PoolRoom(self.replica.pool)

    def start(self) -> None:
        self._execute(self.replica.on_start(time.time()))
        self._restore_pool()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.close()
        self._thread.join(timeout=5)
        for submission in self._inbox.drain():
            submission.finish("the orderer is stopping")

    def _restore_pool(self) -> None:
        """Feed the acknowledged transactions of the LMDB pool back to the replica. Those
        final already (the block was stored, the delete raced a later acknowledgement) or no
        longer admissible are dropped from the pool."""
        if not self._durable:
            return
        entries = self._store.pooled()
        if not entries:
            return
        restored = [raw for tx_id, raw in entries if not self.replica.is_final(tx_id)]
        # In chunks, as the loop takes client calls: each becomes one TxForward, which must
        # stay below the peers' receive limit.
        chunks: list[list[bytes]] = [[]]
        size = 0
        for raw in restored:
            if chunks[-1] and size + len(raw) > _GROUP_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(raw)
            size += len(raw)
        for chunk in chunks:
            if chunk:
                self._execute(self.replica.on_transactions(chunk, time.time()))
        self._store.unpool([tx_id for tx_id, _ in entries if tx_id not in self.replica.pool])
        RESTORED.inc(sum(1 for tx_id, _ in entries if tx_id in self.replica.pool))
        log.info("restored %d acknowledged transactions to the pool", len(restored))

    # -- admission (also used by the Broadcast API) ----------------------------------------

    def _keep(self, raw: bytes, seen: _Seen) -> None:
        """Cache an admitted transaction's entry until it is final."""
        with self._seen_lock:  # API threads and the loop: keep the byte count exact
            if raw in self._seen:
                return
            if len(self._seen) >= _SEEN_LIMIT or \
                    self._seen_bytes + len(raw) > _SEEN_BYTES:  # admitted, never final
                self._seen.clear()
                self._seen_bytes = 0
            self._seen[raw] = seen
            self._seen_bytes += len(raw)

    def tx_id(self, raw: bytes) -> bytes:
        """The tx id in an endorsed transaction's bytes (b"" when they do not decode or are
        larger than the consortium's limit). Bytes not seen yet are checked for ordering at
        once (and cached when admitted): the check reads the id too, and nearly every id
        asked for is of a transaction about to be pooled or validated, so it is parsed once."""
        seen = self._checked(raw)
        if seen.verdict is None or len(raw) > self.max_tx_bytes:
            return seen.tx_id
        return tx_id_of(raw).encode()  # refused bytes (never kept): parsed for their id

    def too_large(self, raw: bytes) -> TxInvalid | None:
        if len(raw) <= self.max_tx_bytes:
            return None
        return TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                         f"transaction is {len(raw)} bytes; the limit is {self.max_tx_bytes} "
                         "bytes (genesis limits.max_tx_bytes)")

    def _checked(self, raw: bytes) -> _Seen:
        """`raw`'s entry with its ordering verdict (and, when admitted, its tx id and member):
        the cached one, else checked now and cached when it passes."""
        seen = self._seen.get(raw)
        if seen is not None:  # only admitted entries are kept
            return seen
        seen = _Seen(b"")
        refused = self.too_large(raw)
        if refused is not None:  # never parsed
            seen.verdict = refused
            return seen
        try:
            orderable = check_orderable(raw, self._membership)
        except TxInvalid as exc:
            seen.verdict = exc
            return seen
        seen.tx_id, seen.member, seen.verdict = orderable.tx_id.encode(), orderable.member, None
        self._keep(raw, seen)
        return seen

    def admit(self, raw: bytes) -> TxInvalid | None:
        """The ordering checks (size, decodes, endorsed by an endorser), cached when they
        pass: a transaction is checked once per orderer although it arrives by Broadcast and
        again in a proposal (refused bytes are checked again each time). None when it may be
        ordered, else why not."""
        return self._checked(raw).verdict

    def member_of(self, raw: bytes) -> str:
        """The member an admitted transaction is charged to in the pool (its creator's
        organisation), from the same entry as its verdict, so the charge never depends on
        what the cache (which starts over when full) still holds."""
        return self._checked(raw).member

    def _validate_tx(self, raw: bytes) -> bool | str:
        """The replica's view of `admit`: True, or the reason."""
        verdict = self.admit(raw)
        return True if verdict is None else f"{verdict.code_name}: {verdict.message}"

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        """The consensus thread. No input ends it: an error is logged and that input dropped
        (the protocol tolerates loss), and while iterations keep failing (storage, a bug)
        health says NOT_SERVING, until one works and the last write to the store worked (an
        idle loop tries a small one, `_probe_store`); if the thread ends anyway, health says
        so for good."""
        failing = False
        try:
            while not self._stop.is_set():
                try:
                    self._iterate()
                except Exception:
                    log.exception("consensus loop error")
                    if not failing:
                        failing = True
                        self.on_health(False)
                    continue
                if failing and not self._store_ok:
                    self._probe_store()  # an idle loop writes nothing to learn it from
                if failing and self._store_ok:
                    failing = False
                    self.on_health(True)
        finally:
            if not self._stop.is_set():
                self.on_health(False)

    def _probe_store(self) -> None:
        """While the last write failed, a small write at most every STORE_PROBE_S."""
        now = time.monotonic()
        if now - self._store_probed < STORE_PROBE_S:
            return
        self._store_probed = now
        try:
            self._store.probe_write()
        except Exception as exc:
            log.warning("the store still cannot be written: %s", exc)
            return
        self._store_ok = True

    def _iterate(self) -> None:
        timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 0.5
        item = self._inbox.get(timeout, max_bytes=_GROUP_BYTES)
        # Wall-clock time: the replica stamps blocks with it, and the ledger judges
        # transactions against block times. Timer deadlines are relative, so a clock step
        # only shortens or lengthens one timeout.
        now = time.time()
        if isinstance(item, list):
            self._on_submissions(item, now)
        elif item is not None:
            sender, message = item
            self._execute(self.replica.on_message(sender, message, now))
        while self._timers and self._timers[0][0] <= time.monotonic():
            _, name = heapq.heappop(self._timers)
            self._execute(self.replica.on_timer(name, time.time()))
        self._update_gauges()

    def _on_submissions(self, submissions: list[Submission], now: float) -> None:
        """Pool every waiting submission, write them (with the actions) in one synced
        transaction, then release the API calls waiting for them."""
        error: str | None = "consensus loop error"
        try:
            batch = [tx for submission in submissions for tx in submission.txs]
            actions = self.replica.on_transactions(batch, now)
            pool: list[tuple[bytes, bytes]] = []
            if self._durable:
                # Final already: nothing to keep (a pooled id is not final: blocks drop theirs).
                pooled, final = self.replica.pool, self.replica.is_final
                pool = [(tx_id, raw) for raw in batch if (tx_id := self.tx_id(raw))
                        and (tx_id in pooled or not final(tx_id))]
                ACK_GROUP.observe(len(pool))
            self._execute(actions, pool)
            error = None
        finally:
            for submission in submissions:
                submission.finish(error)

    def _execute(self, actions: list[Action], pool: Sequence[tuple[bytes, bytes]] = ()) -> None:
        # Timers first, whatever the writes do: they are this process's alone, and the
        # replica has already noted their deadlines, so a timer lost with a failed write
        # was never armed again (it waited, idle, for peers to move the height or round).
        for action in actions:
            if isinstance(action, SetTimer):
                heapq.heappush(self._timers, (time.monotonic() + action.delay, action.name))
        durable = [a for a in actions if isinstance(a, Persist | Deliver)]
        if durable or pool:
            started = time.monotonic()
            self._store_ok = False
            try:
                delivered = self._store.apply(durable, self.tx_id, pool)  # type: ignore[arg-type]
                self._store_ok = True
            except BaseException:
                # What the replica believes written may not be: it writes it all again.
                self.replica.persist_failed()
                raise
            finally:
                now = time.monotonic()
                STORE_WRITE.observe(now - started)
            for block in delivered:
                self._observe_final(block, now)
                self._on_deliver(block)
        for action in actions:
            if isinstance(action, Send):
                self._transport.send(action.to, action.message)
            elif isinstance(action, Broadcast):
                self._observe_phase(action.message)
                self._transport.broadcast(action.message)
            elif isinstance(action, Evidence):
                self._record_evidence(action.evidence)

    def _record_evidence(self, evidence: consensus_pb2.EquivocationEvidence) -> None:
        EQUIVOCATIONS.labels(evidence.orderer).inc()
        log.warning("orderer %s equivocated at height %d round %d (%s)", evidence.orderer,
                    evidence.height, evidence.round,
                    consensus_pb2.EquivocationKind.Name(evidence.kind))
        self._store.add_evidence(evidence)

    def _observe_final(self, block: block_pb2.Block, now: float) -> None:
        HEIGHT.set(self._store.height)
        BLOCK_TXS.observe(len(block.transactions))
        arrivals = []
        for tx in block.transactions:
            with self._seen_lock:
                seen = self._seen.pop(tx, None)
                if seen is not None:
                    self._seen_bytes -= len(tx)
            tx_id = seen.tx_id if seen is not None else tx_id_of(tx).encode()
            arrivals.append(self._arrivals.pop(tx_id, None))
        seen = [a for a in arrivals if a is not None]
        if seen:
            FINALITY.observe(now - min(seen))

    def _observe_phase(self, message: consensus_pb2.ConsensusMessage) -> None:
        """Time the phases from what this orderer broadcasts as primary: its proposal, then
        the prepare certificate, then the commit certificate of the same height and round."""
        kind = message.WhichOneof("body")
        if kind not in ("proposal", "prepared", "decided"):
            return
        body = getattr(message, kind)
        now = time.monotonic()
        started = self._phase
        if kind == "proposal":
            self._phase = (body.height, body.round, "prepare", now)
            return
        if started is None or started[:2] != (body.height, body.round):
            return
        _, _, phase, since = started
        if kind == "prepared" and phase == "prepare":
            PHASE_SECONDS.labels("prepare").observe(now - since)
            self._phase = (body.height, body.round, "commit", now)
        elif kind == "decided" and phase == "commit":
            PHASE_SECONDS.labels("commit").observe(now - since)
            self._phase = None

    def _update_gauges(self) -> None:
        replica = self.replica
        if replica.round > self._last_round:
            ROUND_CHANGES.inc(replica.round - self._last_round)
        self._last_round = replica.round
        ROUND.set(replica.round)
        IS_PRIMARY.set(1 if replica.primary == replica.me else 0)
        PENDING.set(replica.pending_transactions)
        PENDING_BYTES.set(replica.pool.total_bytes)
