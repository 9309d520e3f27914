"""The orderer's event loop: the only thread that touches the consensus replica.

Inputs (client transactions, peer messages, timers) arrive on one queue; each input's actions
are executed in order: Persist and Deliver first, in one synced LMDB transaction, then sends
and timers (the replica's durability rule).
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable
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
from gridledger_core.consensus.protocol import ChainTip, Dependencies, Replica, ReplicaConfig
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, block_hash
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.checks import check_for_ordering
from gridledger_core.ledger.errors import TxInvalid
from gridledger_core.signing_identity import SigningIdentity
from gridledger_orderer.store import OrdererStore, tx_id_of
from gridledger_orderer.transport import Transport

log = logging.getLogger(__name__)

HEIGHT = Gauge("gridledger_orderer_height", "Final blocks held by this orderer.")
ROUND = Gauge("gridledger_orderer_round", "Consensus round at the current height.")
IS_PRIMARY = Gauge("gridledger_orderer_is_primary",
                   "1 when this orderer is the lottery primary of the current round.")
ROUND_CHANGES = Counter("gridledger_orderer_round_changes",
                        "Rounds entered above 0, each one a change of primary.")
PENDING = Gauge("gridledger_orderer_pending_transactions",
                "Transactions in this orderer's pool, waiting for a block.")
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


_UNCHECKED = object()
_SEEN_LIMIT = 200_000  # entries kept before the cache starts over


class _Seen:
    """What this orderer knows about one transaction's bytes: its tx id (b"" when the bytes
    do not decode) and, once checked, the ordering verdict."""

    __slots__ = ("tx_id", "verdict")

    def __init__(self, tx_id: bytes) -> None:
        self.tx_id = tx_id
        self.verdict: TxInvalid | object | None = _UNCHECKED


@dataclass(frozen=True)
class OrderingParams:
    max_batch_txs: int = 500
    max_batch_bytes: int = 1 << 20
    max_batch_wait: float = 0.05
    round_timeout: float = 1.0


class OrdererNode:
    def __init__(self, genesis: Genesis, identity: SigningIdentity, store: OrdererStore,
                 transport: Transport, params: OrderingParams,
                 on_deliver: Callable[[block_pb2.Block], None]) -> None:
        self._store = store
        self._transport = transport
        self._on_deliver = on_deliver
        self._membership = genesis.membership
        # tx bytes -> _Seen: each transaction is parsed and verified once per orderer,
        # although its id is needed on admission, forwarding, proposal, commit and storage.
        # Keyed by the bytes themselves (equal bytes, equal entry; Python's hash of ~1 KB is
        # cheaper than a sha256); an entry leaves when its transaction is final, after which
        # the tx id alone makes every later arrival a duplicate, so the cache holds about what
        # the pool holds.
        self._seen: dict[bytes, _Seen] = {}
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
                               round_timeout=params.round_timeout)
        deps = Dependencies(
            sign=identity.signer.sign,
            verify_sig=ed25519_verifier(genesis.orderer_keys),
            vrf_prove=lambda alpha: vrf.prove(seed, alpha),
            vrf_verify=vrf.verify,
            validate_tx=self._validate_tx,
            tx_id_of=self.tx_id,
            get_block=store.block,
        )
        self.replica = Replica(config, deps, tip, known_tx_ids=store.tx_ids(),
                               persisted=store.persisted())
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._timers: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consensus", daemon=True)
        self._last_round = 0
        # (height, round, phase that started, when) of the phase this primary is driving.
        self._phase: tuple[int, int, str, float] | None = None
        HEIGHT.set(height)

    # -- inputs from other threads ---------------------------------------------------------

    def submit_transactions(self, txs: list[bytes]) -> None:
        """Transactions the API admitted (``admit`` passed): the replica pools them even
        above the pool's capacity, which the API checks first, so an acknowledged
        transaction is never dropped for lack of room."""
        now = time.monotonic()
        for tx in txs:
            self._arrivals.setdefault(self.tx_id(tx), now)
        self._events.put(("txs", txs))

    def receive(self, sender: str, message: consensus_pb2.ConsensusMessage) -> None:
        self._events.put(("msg", (sender, message)))

    def start(self) -> None:
        self._execute(self.replica.on_start(time.time()))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._events.put(("stop", None))
        self._thread.join(timeout=5)

    # -- admission (also used by the Broadcast API) ----------------------------------------

    def _lookup(self, raw: bytes) -> _Seen:
        seen = self._seen.get(raw)
        if seen is None:
            seen = _Seen(tx_id_of(raw).encode())
            if len(self._seen) >= _SEEN_LIMIT:  # refused or never-final transactions
                self._seen.clear()
            self._seen[raw] = seen
        return seen

    def tx_id(self, raw: bytes) -> bytes:
        """The tx id in an endorsed transaction's bytes (b"" when they do not decode)."""
        return self._lookup(raw).tx_id

    def admit(self, raw: bytes) -> TxInvalid | None:
        """The ordering checks (decodes, endorsed by an endorser), cached: a transaction is
        checked once per orderer although it arrives by Broadcast and again in a proposal.
        None when it may be ordered, else why not."""
        seen = self._lookup(raw)
        if seen.verdict is _UNCHECKED:
            try:
                check_for_ordering(raw, self._membership)
                seen.verdict = None
            except TxInvalid as exc:
                seen.verdict = exc
        return seen.verdict  # type: ignore[return-value]

    def _validate_tx(self, raw: bytes) -> bool | str:
        """The replica's view of `admit`: True, or the reason."""
        verdict = self.admit(raw)
        return True if verdict is None else f"{verdict.code_name}: {verdict.message}"

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 0.5
            try:
                kind, payload = self._events.get(timeout=timeout)
            except queue.Empty:
                kind, payload = "", None
            # Wall-clock time: the replica stamps blocks with it, and the ledger judges
            # transactions against block times. Timer deadlines are relative, so a clock step
            # only shortens or lengthens one timeout.
            now = time.time()
            try:
                if kind == "txs":
                    batch = list(payload)  # type: ignore[call-overload]
                    while len(batch) < 5000:  # coalesce queued submissions into one input
                        try:
                            more_kind, more = self._events.get_nowait()
                        except queue.Empty:
                            break
                        if more_kind != "txs":
                            self._events.put((more_kind, more))
                            break
                        batch.extend(more)  # type: ignore[call-overload]
                    self._execute(self.replica.on_transactions(batch, now))
                elif kind == "msg":
                    sender, message = payload  # type: ignore[misc]
                    self._execute(self.replica.on_message(sender, message, now))
                elif kind == "stop":
                    return
                while self._timers and self._timers[0][0] <= time.monotonic():
                    _, name = heapq.heappop(self._timers)
                    self._execute(self.replica.on_timer(name, time.time()))
            except Exception:
                log.exception("consensus loop error on %s", kind or "timer")
            self._update_gauges()

    def _execute(self, actions: list[Action]) -> None:
        durable = [a for a in actions if isinstance(a, Persist | Deliver)]
        if durable:
            delivered = self._store.apply(durable, self.tx_id)  # type: ignore[arg-type]
            now = time.monotonic()
            for block in delivered:
                self._observe_final(block, now)
                self._on_deliver(block)
        for action in actions:
            if isinstance(action, Send):
                self._transport.send(action.to, action.message)
            elif isinstance(action, Broadcast):
                self._observe_phase(action.message)
                self._transport.broadcast(action.message)
            elif isinstance(action, SetTimer):
                heapq.heappush(self._timers, (time.monotonic() + action.delay, action.name))
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
            seen = self._seen.pop(tx, None)
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
