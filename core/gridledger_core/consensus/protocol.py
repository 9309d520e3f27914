"""One orderer replica of the lottery-primary co-sign protocol, as a pure state machine.

No sockets, clocks, threads or randomness: every input carries ``now`` and every output is
an action (see ``actions``) that the adapter executes. ``now`` must be wall-clock seconds
(Unix time): the primary stamps blocks with it and auxiliaries judge stamps against it. No
input, whatever its bytes or sender, raises out of ``on_message``, ``on_timer`` or
``on_transactions``.

Protocol, per height h (the number of the next block):

1. The lottery primary of (h, r) proposes a pre-block (its signature over the header) —
   in round 0 when its pool reaches ``max_batch_txs`` or ``max_batch_bytes`` or the oldest
   pending transaction waited ``max_batch_wait``; in later rounds at once. If it holds a
   lock it re-proposes the locked block with its prepare certificate instead.
2. Replicas validate it (primary entitled, height, previous hash, data hash, VRF proof,
   proposer signature, block time, every transaction through ``validate_tx``, no tx id
   twice in the block or already on the chain) and send a PREPARE co-signature to the
   primary, unless they are locked on another block and the proposal carries no prepare
   certificate of a round at least as high as their lock. A pre-block of an earlier round
   (header round below the proposal's) is voted for only with ``justify``: the prepare
   certificate for exactly that block, of a round between the header's and the proposal's.
3. 2f+1 PREPAREs make a prepare certificate; the primary broadcasts it. Replicas lock on it
   (the lock is the highest prepare certificate seen at h) and send a COMMIT co-signature.
4. 2f+1 COMMITs make the commit certificate, the block's QuorumCertificate: final.

Safety: if B is final at round r, at least f+1 honest replicas are locked on B with round r.
They prepare another block only when shown a prepare certificate of round >= r for it, and
no such certificate can form (it would need one of them), so no other block ever gets a
prepare certificate, hence a commit certificate, at h. Each replica persists its votes and
lock before its signatures leave (``Persist`` before ``Send``) and never signs two different
blocks in one (height, round, phase), also across restarts.

Block time: a fresh pre-block (header round = proposal round) must be stamped within
[now - max_clock_skew, now + max_clock_skew] of the auxiliary's clock (the arrival time,
for a proposal held for a later round) and not before the previous block, so no single
orderer moves block time: a byzantine primary cannot backdate a block after an idle hour,
nor re-propose an earlier round's pre-block (with its older stamp, and choosing among
several lottery seeds) without the certificate that forces it. Stamps outside the
protobuf Timestamp range are refused.

Liveness: without progress a replica times out (``round_timeout`` * 2**r, capped), stops
voting in round r and broadcasts ROUND_CHANGE(h, r+1) with its lock, signed over
``signing.round_change_bytes`` (height, round and the lock's round and hash). It enters round R on
ROUND_CHANGEs for >= R from 2f+1 orderers, joins the (f+1)-th highest round announced by
others, re-sends its ROUND_CHANGE every timeout, and enters R directly on a valid prepare
certificate of round R. Locks travel in ROUND_CHANGEs, so the next primary learns them.
Timers run only while there is work (pending transactions, a proposal, a lock).

Locked blocks are always obtainable: every pre-block a replica PREPAREd stays persisted
(``BLOCKS_KEY``) until its height is final, not only the last one. A replica that adopts a
lock (from a ROUND_CHANGE or a proposal's ``justify``) without holding the block sends a
BlockFetchRequest(height, hash) to f+1 of the certificate's signers (at least one honest;
an honest signer prepared it, so holds it), at most every half round timeout; it accepts
a BlockFetchResponse only for its lock's hash and after full validation, then proposes it
when primary. Without this, a certificate withheld until the honest replicas' last prepare
moved on and they restarted left every honest replica locked on a block none held.

Bounds (a peer can make a replica do only bounded work): rounds above ``MAX_ROUND`` are
ignored, so round + 1 always fits its uint32 field; a round above this replica's only
counts toward the f+1 join rule, which needs an honest sender. ROUND_CHANGEs are dropped as
duplicates by (round, lock round) per sender before any signature is checked, then rate
limited per peer, then their signature and carried certificate verified; a certificate is
verified once per (phase, round, block) and height. Per-peer token buckets (by ``now``)
limit SyncRequests, BlockFetchRequests and ROUND_CHANGEs; SyncResponses stop at
``max_sync_bytes`` (always at least one block); messages held for the next height and
proposals held for later rounds are capped in count and ``max_buffer_bytes``.

Equivocation: two different pre-blocks signed by one primary for one (height, round), two
votes of one phase for different blocks (seen directly or as co-signatures in two
certificates), or two ROUND_CHANGEs of one round carrying locks of one round on different
blocks become an ``Evidence`` action with ``EquivocationEvidence`` (see ``evidence``); it
changes nothing in consensus, the adapter counts, stores and exposes it.

Transactions: every orderer pools what its clients submit and forwards it once to all peers
(``TxForward``), so any orderer that becomes primary can propose it and every replica's
round timer guards against a primary that censors or freezes. This object keeps its pool in
memory; durability is the adapter's: the orderer writes a client's transaction to its LMDB
pool before acknowledging it and feeds that pool back through ``on_transactions`` on
restart. A pre-block with more than ``max_batch_txs`` transactions, or more than
``max_batch_bytes`` of them (one transaction alone excepted, as in ``_cut_block``), gets no
vote, so every orderer must run with the same batch bounds.

Catch-up: a message from a higher height, or a commit certificate for a block this replica
lacks, triggers a SyncRequest; final blocks come back in SyncResponses and are checked with
``certificate.verify_block``. A replica answers a ROUND_CHANGE or proposal from a lower
height with the blocks the sender misses. After a response that advanced it, a replica
asks again at once (responses are cut by count and by bytes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

from google.protobuf.message import DecodeError

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import certificate, evidence, lottery
from gridledger_core.consensus.actions import (
    Action,
    Broadcast,
    Deliver,
    Evidence,
    Persist,
    Send,
    SetTimer,
)
from gridledger_core.consensus.clock import MAX_CLOCK_SKEW_S
from gridledger_core.consensus.limits import PeerRateLimiter
from gridledger_core.consensus.pool import TxPool
from gridledger_core.consensus.quorum import Quorum
from gridledger_core.consensus.signing import (
    Phase,
    block_hash,
    data_hash,
    round_change_bytes,
    signing_bytes,
)

STATE_KEY = "consensus/state"
BLOCKS_KEY = "consensus/blocks"
ROUND_TIMER = "round"
BATCH_TIMER = "batch"

_PREPARE = consensus_pb2.VOTE_PHASE_PREPARE
_COMMIT = consensus_pb2.VOTE_PHASE_COMMIT
_FUTURE_BUFFER = 256  # messages kept for height h+1 while still at h
_ROUND_WINDOW = 64  # proposals kept for rounds this far ahead
# Rounds above this are ignored wherever they come from, so round + 1 always fits the
# uint32 round fields (honest rounds grow by one per timeout: it is never reached).
MAX_ROUND = 1 << 30
# Heights whose final tx ids a replica keeps in memory after finalising them (from then on
# the adapter's store answers ``Dependencies.is_final``): bounded, and far more heights than
# one input (a SyncResponse carries up to ``sync_batch`` blocks) can finalise.
_RECENT_FINAL = 64
# Transactions a cut passes over because they would take the block past its byte limit before
# it stops looking (a large one of one member does not end the block for every other member).
_CUT_MISSES = 64
# The range google.protobuf.Timestamp allows (0001-01-01 to 9999-12-31): a stamp outside it
# would make every reader of the block (ToDatetime, ToNanoseconds) raise.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


# How long the oldest pending transaction waits for its block in round 0. Below saturation a
# block is cut after this wait, and each block costs every orderer and committer the same
# whatever its size (proposal checks, two vote rounds, the VRF, synced writes): 100 ms
# instead of 50 made blocks half as frequent at 70 % of capacity and, with the endorser's
# linger, cut the network's CPU per transaction by 9 % there and at the max rate
# (docs/performance.md, twenty-first round). Every transaction waits up to 50 ms longer.
DEFAULT_MAX_BATCH_WAIT = 0.1


@dataclass(frozen=True)
class ReplicaConfig:
    orderer_id: str
    # Orderer id -> 32-byte Ed25519 public key (also its VRF key), from the genesis config.
    orderers: Mapping[str, bytes]
    max_batch_txs: int = 500
    max_batch_bytes: int = 1 << 20
    max_batch_wait: float = DEFAULT_MAX_BATCH_WAIT
    round_timeout: float = 1.0
    # How far ahead of this orderer's clock a proposed block's timestamp may be (seconds).
    max_clock_skew: float = MAX_CLOCK_SKEW_S
    max_backoff_exponent: int = 5
    max_pool_txs: int = 100_000
    max_pool_bytes: int = 256 << 20
    sync_batch: int = 16
    # A SyncResponse stops before the block that would take it past this many bytes (but
    # always carries at least one block, so a replica behind large blocks still progresses).
    max_sync_bytes: int = 4 << 20
    # Messages held for the next height, and proposals held for later rounds, in bytes each.
    max_buffer_bytes: int = 16 << 20
    # Per peer: inputs per second (the burst is the same number) before they are ignored.
    sync_request_rate: float = 20.0
    block_fetch_rate: float = 5.0
    round_change_rate: float = 10.0


@dataclass(frozen=True)
class Dependencies:
    """Everything with side effects or secrets, injected."""

    sign: Callable[[bytes], bytes]  # this orderer's Ed25519 signature
    verify_sig: certificate.VerifySig  # (orderer id, message, signature) -> bool
    vrf_prove: Callable[[bytes], bytes]  # alpha -> proof with this orderer's key
    vrf_verify: lottery.VrfVerify  # (public key, proof, alpha) -> output or None
    validate_tx: Callable[[bytes], bool | str]  # True, or False / a reason string
    tx_id_of: Callable[[bytes], bytes]
    get_block: Callable[[int], block_pb2.Block | None]  # final block by number, from storage
    # Whether a tx id is in a final block the adapter has stored (a key read, not a set in
    # memory: every id ever ordered would grow without bound). Ids of the blocks this
    # replica finalised since start are also kept in memory for a while (``_RECENT_FINAL``),
    # as the adapter stores a Deliver only after the input that produced it.
    is_final: Callable[[bytes], bool] = lambda tx_id: False
    # The member (organisation) a validated transaction is charged to in the pool: its
    # creator's. Members share the pool and take turns when a block is cut (pool.py).
    member_of: Callable[[bytes], str] = lambda tx: ""


@dataclass(frozen=True)
class ChainTip:
    """Where ordering resumes: the next block's number, previous hash and previous seed."""

    height: int
    previous_hash: bytes
    previous_seed: bytes


def block_time(header: block_pb2.BlockHeader) -> float | None:
    """The header's time stamp in seconds, or None when it is not a valid Timestamp."""
    ts = header.timestamp
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        return None
    return ts.seconds + ts.nanos / 1e9


def _vote_msg(
    height: int, round_: int, phase: int, bh: bytes, sig: bytes
) -> consensus_pb2.ConsensusMessage:
    return consensus_pb2.ConsensusMessage(
        vote=consensus_pb2.Vote(
            height=height, round=round_, phase=phase, block_hash=bh, signature=sig
        )
    )


class Replica:
    """The consensus state of one orderer. Construct it from the chain tip and whatever it
    persisted (``Persist`` key/values, empty on first start), then call ``on_start``."""

    def __init__(
        self,
        config: ReplicaConfig,
        deps: Dependencies,
        tip: ChainTip,
        persisted: Mapping[str, bytes] | None = None,
    ) -> None:
        if config.orderer_id not in config.orderers:
            raise ValueError(f"{config.orderer_id!r} is not in the orderer set")
        self.config = config
        self.deps = deps
        self.me = config.orderer_id
        self.orderers = dict(config.orderers)
        self.quorum = Quorum(len(self.orderers))
        # Final tx ids of the last _RECENT_FINAL heights this replica finalised (one set to
        # look up, one list per height to forget them by).
        self._recent_final: set[bytes] = set()
        self._recent_heights: deque[list[bytes]] = deque()
        self.pool = TxPool(config.max_pool_txs, config.max_pool_bytes)
        self.height = tip.height
        self.previous_hash = tip.previous_hash
        self.previous_seed = tip.previous_seed
        self._deadlines: dict[str, float] = {}
        self._sync_quiet_until = float("-inf")
        self._help_quiet_until: dict[str, float] = {}
        self._future: list[tuple[str, consensus_pb2.ConsensusMessage]] = []
        self._future_bytes = 0
        self._sync_limit = PeerRateLimiter(config.sync_request_rate, config.sync_request_rate)
        self._fetch_limit = PeerRateLimiter(config.block_fetch_rate, config.block_fetch_rate)
        self._rc_limit = PeerRateLimiter(config.round_change_rate, config.round_change_rate)
        self._fetch_quiet_until = float("-inf")
        self._fetch_attempt = 0
        self.equivocations = evidence.Tracker(self.me)
        self._my_vrf: tuple[int, bytes, bytes] | None = None  # (height, proof, output)
        self._previous_stamp: tuple[int, float] = (-1, 0.0)  # (height, previous block's time)
        self._reset_height()
        if persisted:
            self._restore(persisted)

    # --- introspection for the adapter (metrics, Broadcast API) ---------------------------

    @property
    def round(self) -> int:
        return self._round

    @property
    def changing_round(self) -> bool:
        return self._changing

    @property
    def primary(self) -> str:
        return self._primary(self._round)

    @property
    def pending_transactions(self) -> int:
        return len(self.pool)

    @property
    def pool_full(self) -> bool:
        return self.pool.full

    def knows_tx(self, tx_id: bytes) -> bool:
        """True when the id is pending here or already final (Broadcast ``duplicate``)."""
        return tx_id in self.pool or self.is_final(tx_id)

    def is_final(self, tx_id: bytes) -> bool:
        """True when the id is in a final block (finalised here lately, or stored)."""
        return tx_id in self._recent_final or self.deps.is_final(tx_id)

    @property
    def final_ids_in_memory(self) -> int:
        """Final tx ids held in memory (bounded by _RECENT_FINAL heights of blocks)."""
        return len(self._recent_final)

    # --- inputs ----------------------------------------------------------------------------

    def on_start(self, now: float) -> list[Action]:
        """After construction (first start or restart): ask peers for missed blocks, resume
        the round change or proposal that was under way."""
        out: list[Action] = [
            Broadcast(
                consensus_pb2.ConsensusMessage(
                    sync_request=consensus_pb2.SyncRequest(from_height=self.height)
                )
            )
        ]
        if self._changing:
            out.append(Broadcast(self._round_change_msg(self._target)))
        self._arm_round_timer(now, out)
        self._maybe_propose(now, out)
        return out

    def on_transactions(self, txs: Iterable[bytes], now: float) -> list[Action]:
        """Transactions submitted to this orderer's Broadcast API. Unknown ones that pass
        ``validate_tx`` are pooled and forwarded; the rest are dropped here, so the API should
        check ``knows_tx``, ``pool_full`` and ``validate_tx`` first to answer the client.
        They are pooled even when the pool is full: the API checked ``pool_full`` when it
        acknowledged them, and an acknowledged transaction must not be dropped (the overshoot
        is bounded by what the API admits between two checks)."""
        out: list[Action] = []
        fresh = [tx for tx in txs if self._pool_add(tx, now, force=True)]
        if fresh:
            out.append(
                Broadcast(
                    consensus_pb2.ConsensusMessage(
                        tx_forward=consensus_pb2.TxForward(transactions=fresh)
                    )
                )
            )
            self._arm_round_timer(now, out)
            self._maybe_propose(now, out)
        return out

    def on_timer(self, name: str, now: float) -> list[Action]:
        deadline = self._deadlines.get(name)
        if deadline is None:
            return []  # stale: the timer was disarmed since
        if now < deadline:
            return [SetTimer(name, deadline - now)]  # early (or superseded): re-arm remainder
        del self._deadlines[name]
        out: list[Action] = []
        if name == ROUND_TIMER:
            self._on_round_timeout(now, out)
        elif name == BATCH_TIMER:
            self._maybe_propose(now, out)
        return out

    def on_message(
        self, sender: str, msg: consensus_pb2.ConsensusMessage, now: float
    ) -> list[Action]:
        """A message from orderer ``sender`` (the transport-authenticated peer identity)."""
        out: list[Action] = []
        if sender not in self.orderers or sender == self.me:
            return out
        self._dispatch(sender, msg, now, out)
        return out

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(
        self, sender: str, msg: consensus_pb2.ConsensusMessage, now: float, out: list[Action]
    ) -> None:
        kind = msg.WhichOneof("body")
        if kind == "tx_forward":
            self._on_tx_forward(msg.tx_forward, now, out)
            return
        if kind == "sync_request":
            self._on_sync_request(sender, msg.sync_request, now, out)
            return
        if kind == "sync_response":
            self._on_sync_response(sender, msg.sync_response, now, out)
            return
        body = getattr(msg, kind) if kind else None
        if body is None:
            return
        if getattr(body, "round", 0) > MAX_ROUND:
            return  # no honest orderer gets there; keeps every round + 1 in its field
        height = body.height
        if height < self.height:
            if kind in ("round_change", "proposal", "block_fetch_request"):
                self._help_lagging(sender, height, now, out)
            return
        if height > self.height:
            if height == self.height + 1 and kind != "block_fetch_request":
                self._buffer_future(sender, msg)
            self._request_sync(sender, now, out)
            return
        if kind == "proposal":
            self._on_proposal(sender, msg.proposal, now, out)
        elif kind == "block_fetch_request":
            self._on_block_fetch_request(sender, msg.block_fetch_request, now, out)
        elif kind == "block_fetch_response":
            self._on_block_fetch_response(msg.block_fetch_response, now, out)
        elif kind == "vote":
            self._on_vote(sender, msg.vote, now, out)
        elif kind == "prepared":
            self._on_prepared(msg.prepared, now, out)
        elif kind == "decided":
            self._on_decided(sender, msg.decided, now, out)
        elif kind == "round_change":
            self._on_round_change(sender, msg.round_change, now, out)

    def _buffer_future(self, sender: str, msg: consensus_pb2.ConsensusMessage) -> None:
        size = msg.ByteSize()
        if (
            len(self._future) < _FUTURE_BUFFER
            and self._future_bytes + size <= self.config.max_buffer_bytes
        ):
            self._future.append((sender, msg))
            self._future_bytes += size

    # --- per-height state ------------------------------------------------------------------

    def _reset_height(self) -> None:
        # Block fetches are per height: a quiet window or rotation of the last height's
        # lock must not delay or skew the first fetch at this one.
        self._fetch_quiet_until = float("-inf")
        self._fetch_attempt = 0
        self._round = 0
        self._changing = False
        self._target = 0
        self._last_prepare: consensus_pb2.SignedVote | None = None
        self._last_commit: consensus_pb2.SignedVote | None = None
        self._lock: consensus_pb2.VoteCertificate | None = None
        self._blocks: dict[bytes, block_pb2.Block] = {}  # pre-blocks seen at this height
        self._valid: dict[bytes, bytes] = {}  # block hash -> seed, for validated pre-blocks
        self._rc: dict[str, int] = {}  # highest ROUND_CHANGE round per orderer
        # Per orderer: (round, lock round or -1) of its last verified ROUND_CHANGE; anything
        # not above it is a duplicate and dropped before any signature is checked.
        self._rc_seen: dict[str, tuple[int, int]] = {}
        # Round -> (primary, proposal, arrival time, bytes), for rounds not entered yet.
        self._pending: dict[int, tuple[str, consensus_pb2.Proposal, float, int]] = {}
        self._pending_bytes = 0
        self._prepared: set[bytes] = set()  # blocks this replica PREPAREd at this height
        self._certs: dict[tuple[int, int, bytes], consensus_pb2.VoteCertificate] = {}
        self._persisted_blocks: frozenset[bytes] | None = frozenset()
        self._primaries: dict[int, str] = {}  # round -> lottery primary at this height
        self.equivocations.reset()
        self._reset_round()

    def _reset_round(self) -> None:
        self._proposed: bytes | None = None  # hash this replica proposed as primary
        self._prepare_votes: dict[str, bytes] = {}
        self._commit_votes: dict[str, bytes] = {}
        self._prepared_sent = False

    def _primary(self, round_: int) -> str:
        # Asked for every message; the lottery hashes n tickets, so remember it per height.
        primary = self._primaries.get(round_)
        if primary is None:
            primary = lottery.primary(self.orderers, self.previous_seed, self.height, round_)
            if len(self._primaries) >= _ROUND_WINDOW:  # peers name arbitrary rounds
                self._primaries.clear()
            self._primaries[round_] = primary
        return primary

    def _timeout(self, round_: int) -> float:
        return self.config.round_timeout * 2 ** min(round_, self.config.max_backoff_exponent)

    def _has_work(self) -> bool:
        return bool(len(self.pool) or self._blocks or self._lock is not None or self._changing)

    def _set_timer(self, name: str, delay: float, now: float, out: list[Action]) -> None:
        delay = max(delay, 0.0)
        self._deadlines[name] = now + delay
        out.append(SetTimer(name, delay))

    def _arm_round_timer(self, now: float, out: list[Action], *, restart: bool = False) -> None:
        if (restart or ROUND_TIMER not in self._deadlines) and self._has_work():
            level = self._target if self._changing else self._round
            self._set_timer(ROUND_TIMER, self._timeout(level), now, out)

    # --- persistence -----------------------------------------------------------------------

    def _persist(self, out: list[Action]) -> None:
        """Write-ahead record of votes and lock; callers append their Sends after this."""
        state = consensus_pb2.ReplicaState(
            height=self.height,
            round=self._round,
            changing=self._changing,
            target_round=self._target,
        )
        if self._last_prepare is not None:
            state.last_prepare.CopyFrom(self._last_prepare)
        if self._last_commit is not None:
            state.last_commit.CopyFrom(self._last_commit)
        if self._lock is not None:
            state.lock.CopyFrom(self._lock)
        # Every block this replica prepared stays on disk until the height is final: any
        # prepare certificate its vote is part of may become some replica's lock, and that
        # replica must be able to fetch the block from the certificate's signers.
        wanted = {h for h in self._prepared if h in self._blocks}
        if self._lock is not None and self._lock.block_hash in self._blocks:
            wanted.add(self._lock.block_hash)
        if wanted != self._persisted_blocks:
            kept = consensus_pb2.ReplicaBlocks(blocks=[self._blocks[h] for h in sorted(wanted)])
            out.append(Persist(BLOCKS_KEY, kept.SerializeToString()))
            self._persisted_blocks = frozenset(wanted)
        out.append(Persist(STATE_KEY, state.SerializeToString()))

    def persist_failed(self) -> None:
        """The adapter could not write the last actions: what this replica believes written
        may not be, so its next persist writes its blocks again (the state goes every time)."""
        self._persisted_blocks = None  # unknown: differs from any set of blocks

    def _restore(self, persisted: Mapping[str, bytes]) -> None:
        raw = persisted.get(STATE_KEY)
        if raw is None:
            return
        state = consensus_pb2.ReplicaState.FromString(raw)
        if state.height < self.height:
            return  # votes of a height that is final since: nothing left to protect
        if state.height > self.height:
            raise ValueError(
                f"consensus record at height {state.height} but chain tip at {self.height}: "
                "a Deliver was not made durable before later sends"
            )
        self._round = state.round
        self._changing = state.changing
        self._target = state.target_round
        if state.HasField("last_prepare"):
            self._last_prepare = state.last_prepare
        if state.HasField("last_commit"):
            self._last_commit = state.last_commit
        if state.HasField("lock"):
            self._lock = state.lock
        raw_blocks = persisted.get(BLOCKS_KEY)
        if raw_blocks:
            for blk in consensus_pb2.ReplicaBlocks.FromString(raw_blocks).blocks:
                # The blocks key is rewritten only when it changes: skip older heights.
                if block_pb2.BlockHeader.FromString(blk.header).number == self.height:
                    self._blocks[block_hash(blk.header)] = blk
            self._persisted_blocks = frozenset(self._blocks)
            self._prepared = set(self._blocks)  # kept for the same reason as before
        if self._changing:
            self._rc[self.me] = self._target

    # --- transactions ----------------------------------------------------------------------

    def _pool_add(
        self, tx: bytes, now: float, *, validated: bool = False, force: bool = False
    ) -> bool:
        """Pool a transaction not seen before; garbage never enters, so it never keeps the
        round timer running. ``force``: even when the pool is full."""
        tx_id = self.deps.tx_id_of(tx)
        if tx_id in self.pool or (self.pool.full and not force) or self.is_final(tx_id):
            return False
        if not validated and self.deps.validate_tx(tx) is not True:
            return False
        return self.pool.add(tx_id, tx, now, force=force, member=self.deps.member_of(tx))

    def _on_tx_forward(self, fwd: consensus_pb2.TxForward, now: float, out: list[Action]) -> None:
        added = False
        for tx in fwd.transactions:
            added |= self._pool_add(tx, now)
        if added:
            self._arm_round_timer(now, out)
            self._maybe_propose(now, out)

    # --- proposing -------------------------------------------------------------------------

    def _my_vrf_for_height(self) -> tuple[bytes, bytes]:
        if self._my_vrf is None or self._my_vrf[0] != self.height:
            alpha = lottery.alpha(self.previous_seed, self.height)
            proof = self.deps.vrf_prove(alpha)
            output = self.deps.vrf_verify(self.orderers[self.me], proof, alpha)
            if output is None:
                raise RuntimeError("own VRF proof does not verify: wrong VRF key configured")
            self._my_vrf = (self.height, proof, output)
        return self._my_vrf[1], self._my_vrf[2]

    def _maybe_propose(self, now: float, out: list[Action]) -> None:
        if self._changing or self._proposed is not None or self._primary(self._round) != self.me:
            return
        r = self._round
        justify: consensus_pb2.VoteCertificate | None = None
        block: block_pb2.Block | None = None
        if self._last_prepare is not None and self._last_prepare.round == r:
            # Restarted after proposing in this round: repeat that proposal, never a new one.
            block = self._blocks.get(self._last_prepare.block_hash)
            if block is None:
                return
            if self._lock is not None and self._lock.block_hash == self._last_prepare.block_hash:
                justify = self._lock  # it was the locked block, re-proposed with its certificate
        elif self._lock is not None:
            block = self._blocks.get(self._lock.block_hash)
            if block is None:
                self._fetch_locked_block(now, out)  # propose it once a signer sends it
                return
            justify = self._lock
        else:
            if not self._batch_ready(now, out):
                return
            block = self._cut_block(now)
            if block is None:
                return
        bh = block_hash(block.header)
        self._proposed = bh
        self._blocks[bh] = block
        proposal = consensus_pb2.Proposal(height=self.height, round=r, block=block)
        if justify is not None:
            proposal.justify.CopyFrom(justify)
        sig = self._sign_vote(Phase.PREPARE, r, bh, out)
        if sig is None:
            return
        out.append(Broadcast(consensus_pb2.ConsensusMessage(proposal=proposal)))
        self._count_vote(self.me, _PREPARE, bh, sig, now, out)

    def _batch_ready(self, now: float, out: list[Action]) -> bool:
        if not len(self.pool):
            return False
        if self._round > 0:
            return True  # the cluster already waited a whole timeout
        if (
            len(self.pool) >= self.config.max_batch_txs
            or self.pool.total_bytes >= self.config.max_batch_bytes
        ):
            return True
        oldest = self.pool.oldest_arrival()
        assert oldest is not None
        due = oldest + self.config.max_batch_wait
        if now >= due:
            return True
        if self._deadlines.get(BATCH_TIMER) != due:
            self._set_timer(BATCH_TIMER, due - now, now, out)
        return False

    def _cut_block(self, now: float) -> block_pb2.Block | None:
        txs: list[bytes] = []
        size = 0
        misses = 0
        # Validated when pooled; the members take turns, a different one first each height.
        for _, tx in self.pool.in_turns(first=self.height):
            if len(txs) >= self.config.max_batch_txs:
                break
            if size + len(tx) > self.config.max_batch_bytes and txs:
                misses += 1  # others' smaller ones may still fit, but the cut stays bounded
                if misses > _CUT_MISSES:
                    break
                continue
            txs.append(tx)
            size += len(tx)
        if not txs:
            return None
        proof, output = self._my_vrf_for_height()
        header = block_pb2.BlockHeader(
            number=self.height,
            previous_hash=self.previous_hash,
            data_hash=data_hash(txs),
            round=self._round,
            proposer=self.me,
            vrf_proof=proof,
        )
        # Block times never go backwards, even when this orderer's clock is behind the last one.
        header.timestamp.FromNanoseconds(int(max(now, self._previous_timestamp()) * 1e9))
        header_bytes = header.SerializeToString()
        bh = block_hash(header_bytes)
        block = block_pb2.Block(header=header_bytes, transactions=txs)
        block.metadata.proposer_signature = self.deps.sign(
            signing_bytes(Phase.PROPOSAL, self.height, self._round, bh)
        )
        self._valid[bh] = output
        return block

    # --- validating ------------------------------------------------------------------------

    def _validate(self, block: block_pb2.Block, now: float) -> str | None:
        """None when the pre-block may be voted for at this height; else why not."""
        bh = block_hash(block.header)
        if bh in self._valid:
            return None
        verdict = certificate.check_pre_block(
            block,
            self.previous_hash,
            self.previous_seed,
            self.orderers,
            self.deps.verify_sig,
            expected_number=self.height,
            vrf_verify=self.deps.vrf_verify,
        )
        if not verdict.ok or verdict.header is None:
            return f"{verdict.reason}: {verdict.detail}"
        # The ledger judges transactions against the block time, so a primary must not be able
        # to pick it: never before the previous block, never ahead of this replica's clock.
        stamp = block_time(verdict.header)
        if stamp is None:
            return "timestamp out of range"
        if stamp > now + self.config.max_clock_skew:
            return f"timestamp {stamp:.3f} is ahead of this orderer's clock"
        if stamp < self._previous_timestamp():
            return "timestamp is before the previous block's"
        # A block no honest primary would cut (see _cut_block) is refused, so a byzantine
        # primary cannot make every replica, and every sync response, carry a huge block.
        # One transaction alone may exceed the byte bound, as in _cut_block.
        count = len(block.transactions)
        if count > self.config.max_batch_txs:
            return f"{count} transactions; at most {self.config.max_batch_txs} per block"
        size = sum(len(tx) for tx in block.transactions)
        if count > 1 and size > self.config.max_batch_bytes:
            return f"{size} bytes of transactions; at most {self.config.max_batch_bytes}"
        seen: set[bytes] = set()
        for tx in block.transactions:
            tx_id = self.deps.tx_id_of(tx)
            if tx_id in seen:
                return f"duplicate tx id {tx_id.hex()}"
            seen.add(tx_id)
            if self.pool.get(tx_id) == tx:
                continue  # validated when pooled, and a final id leaves the pool
            if self.is_final(tx_id):
                return f"duplicate tx id {tx_id.hex()}"
            result = self.deps.validate_tx(tx)
            if result is not True:
                return f"invalid tx {tx_id.hex()}: {result or 'rejected'}"
        self._valid[bh] = verdict.seed
        return None

    def _previous_timestamp(self) -> float:
        if self.height == 0:
            return 0.0
        if self._previous_stamp[0] != self.height:
            previous = self.deps.get_block(self.height - 1)
            if previous is None:
                raise RuntimeError(f"block {self.height - 1} missing from the block store")
            header = block_pb2.BlockHeader.FromString(previous.header)
            self._previous_stamp = (self.height, block_time(header) or 0.0)
        return self._previous_stamp[1]

    def _valid_cert(
        self, cert: consensus_pb2.VoteCertificate, phase: int, now: float, out: list[Action]
    ) -> consensus_pb2.VoteCertificate | None:
        """The verified certificate for ``cert``'s (phase, round, block): 2f+1 valid
        co-signatures. One verified at this height is not verified again (locks travel in
        every round change) and is returned instead, so callers keep only verified copies.
        Every signer's vote is checked against the votes seen before (equivocation)."""
        if cert.height != self.height or cert.phase != phase or len(cert.block_hash) != 32:
            return None
        key = (phase, cert.round, cert.block_hash)
        known = self._certs.get(key)
        if known is not None:
            return known
        signed = signing_bytes(Phase(phase), cert.height, cert.round, cert.block_hash)
        if not certificate.check_signatures(
            cert.signatures, signed, self.orderers, self.deps.verify_sig
        ).ok:
            return None
        if len(self._certs) < _ROUND_WINDOW * 4:  # beyond that, verify again rather than grow
            self._certs[key] = cert
        kind = evidence.vote_kind(phase)
        for cosig in cert.signatures:
            self._observe(
                (kind, cosig.orderer, cert.round, 0),
                cert.block_hash,
                evidence.vote_statement(
                    cert.height, cert.round, phase, cert.block_hash, cosig.signature
                ),
                now,
                out,
            )
        return cert

    # --- equivocation ----------------------------------------------------------------------

    def _observe(
        self,
        key: evidence.Key,
        content: bytes,
        statement: consensus_pb2.SignedStatement,
        now: float,
        out: list[Action],
    ) -> None:
        """Record a verified signed statement; a conflicting earlier one makes evidence."""
        found = self.equivocations.observe(key, content, statement, self.height, now)
        if found is not None:
            out.append(Evidence(found))

    def _record_proposal(
        self,
        block: block_pb2.Block,
        bh: bytes,
        header: block_pb2.BlockHeader,
        now: float,
        out: list[Action],
    ) -> None:
        """A pre-block that passed validation (its proposer signature verified)."""
        key = (evidence.PROPOSAL, header.proposer, header.round, 0)
        self._observe(key, bh, evidence.pre_block_statement(block), now, out)

    def _check_proposal_equivocation(
        self, block: block_pb2.Block, bh: bytes, now: float, out: list[Action]
    ) -> None:
        """A pre-block different from one already seen for its (proposer, round) is evidence
        once its signature verifies, whether or not the rest of it is valid."""
        header = block_pb2.BlockHeader()
        try:
            header.ParseFromString(block.header)
        except DecodeError:
            return
        key = (evidence.PROPOSAL, header.proposer, header.round, 0)
        if header.number != self.height or not self.equivocations.conflicts(key, bh):
            return
        signed = signing_bytes(Phase.PROPOSAL, header.number, header.round, bh)
        if self.deps.verify_sig(header.proposer, signed, block.metadata.proposer_signature):
            self._observe(key, bh, evidence.pre_block_statement(block), now, out)

    def _check_vote_equivocation(
        self, sender: str, v: consensus_pb2.Vote, phase: Phase, now: float, out: list[Action]
    ) -> None:
        """A vote for another block than the one this primary proposed: worth a signature
        check only when the sender already voted for this one in the same round."""
        key = (evidence.vote_kind(v.phase), sender, v.round, 0)
        if len(v.block_hash) != 32 or not self.equivocations.conflicts(key, v.block_hash):
            return
        signed = signing_bytes(phase, self.height, v.round, v.block_hash)
        if self.deps.verify_sig(sender, signed, v.signature):
            statement = evidence.vote_statement(
                self.height, v.round, v.phase, v.block_hash, v.signature
            )
            self._observe(key, v.block_hash, statement, now, out)

    # --- voting ----------------------------------------------------------------------------

    def _sign_vote(self, phase: Phase, round_: int, bh: bytes, out: list[Action]) -> bytes | None:
        """Sign a PREPARE or COMMIT unless that would conflict with a persisted vote; persist
        it before returning, so the caller's Send follows the Persist."""
        last = self._last_prepare if phase is Phase.PREPARE else self._last_commit
        if last is not None:
            if last.round == round_ and last.block_hash == bh:
                return last.signature  # same vote again (retransmission): no new signature
            if last.round >= round_:
                return None
        sig = self.deps.sign(signing_bytes(phase, self.height, round_, bh))
        vote = consensus_pb2.SignedVote(round=round_, block_hash=bh, signature=sig)
        if phase is Phase.PREPARE:
            self._last_prepare = vote
            self._prepared.add(bh)  # kept durably until final (see _persist)
        else:
            self._last_commit = vote
        self._persist(out)
        return sig

    def _on_proposal(
        self,
        sender: str,
        p: consensus_pb2.Proposal,
        now: float,
        out: list[Action],
        received: float | None = None,
    ) -> None:
        """``received``: when a proposal held for a later round arrived (its freshness is
        judged at arrival)."""
        if sender != self._primary(p.round):
            return  # not entitled to propose in that round
        if p.round < self._round or (self._changing and p.round < self._target):
            return
        if p.round > self._round or self._changing:
            if self._changing and p.round == self._target:
                self._enter_round(p.round, now, out)  # the round this replica asked for
            elif p.round <= self._round + _ROUND_WINDOW:
                self._hold_proposal(sender, p, now)
                return
            else:
                return
        block = p.block
        bh = block_hash(block.header)
        self._check_proposal_equivocation(block, bh, now, out)
        if self._validate(block, now) is not None:
            return
        header = block_pb2.BlockHeader.FromString(block.header)
        if header.round > p.round or (header.round == p.round and header.proposer != sender):
            return
        self._record_proposal(block, bh, header, now, out)
        if header.round < p.round:
            # A re-proposal keeps its original header (and time stamp) only together with the
            # prepare certificate that justifies it; otherwise a primary could pick among
            # earlier rounds' pre-blocks (and their seeds and stamps) at will.
            justify = p.justify
            if not (
                p.HasField("justify")
                and justify.block_hash == bh
                and header.round <= justify.round < p.round
            ):
                return
            known = bh in self._blocks
            self._blocks[bh] = block  # before the lock: adopting it needs no fetch then
            if self._adopt_lock(justify, now, out) is None:
                if not known:
                    del self._blocks[bh]
                return
        else:
            # A fresh pre-block carries this round's time: no primary may backdate it (after
            # an idle hour, say) beyond the clock skew the cluster tolerates.
            stamp = block_time(header) or 0.0  # valid: _validate checked it
            arrived = now if received is None else received
            if stamp < arrived - self.config.max_clock_skew:
                return
        self._blocks[bh] = block
        if self._lock is not None and self._lock.block_hash != bh:
            return  # locked elsewhere and not shown a prepare certificate at least as high
        for tx in block.transactions:
            self._pool_add(tx, now, validated=True)  # so a later primary can propose them
        self._arm_round_timer(now, out)
        sig = self._sign_vote(Phase.PREPARE, p.round, bh, out)
        if sig is not None:
            out.append(Send(sender, _vote_msg(self.height, p.round, _PREPARE, bh, sig)))

    def _hold_proposal(self, sender: str, p: consensus_pb2.Proposal, now: float) -> None:
        """Keep a proposal for a round not entered yet (one per round, bounded in bytes)."""
        size = p.ByteSize()
        old = self._pending.get(p.round)
        freed = old[3] if old is not None else 0
        if self._pending_bytes - freed + size > self.config.max_buffer_bytes:
            return  # no room for it: whatever is held for that round stays
        self._pending_bytes -= freed
        self._pending[p.round] = (sender, p, now, size)
        self._pending_bytes += size

    def _on_vote(self, sender: str, v: consensus_pb2.Vote, now: float, out: list[Action]) -> None:
        if v.round != self._round or self._changing or v.phase not in (_PREPARE, _COMMIT):
            return
        phase = Phase.PREPARE if v.phase == _PREPARE else Phase.COMMIT
        if v.block_hash != self._proposed:
            self._check_vote_equivocation(sender, v, phase, now, out)
            return
        signed = signing_bytes(phase, self.height, v.round, v.block_hash)
        if not self.deps.verify_sig(sender, signed, v.signature):
            return
        self._observe(
            (evidence.vote_kind(v.phase), sender, v.round, 0),
            v.block_hash,
            evidence.vote_statement(self.height, v.round, v.phase, v.block_hash, v.signature),
            now,
            out,
        )
        self._count_vote(sender, v.phase, v.block_hash, v.signature, now, out)

    def _count_vote(
        self, voter: str, phase: int, bh: bytes, sig: bytes, now: float, out: list[Action]
    ) -> None:
        votes = self._prepare_votes if phase == _PREPARE else self._commit_votes
        votes.setdefault(voter, sig)
        if len(votes) < self.quorum.q:
            return
        cert = consensus_pb2.VoteCertificate(
            height=self.height,
            round=self._round,
            phase=phase,
            block_hash=bh,
            signatures=[
                block_pb2.CoSignature(orderer=o, signature=s) for o, s in sorted(votes.items())
            ],
        )
        if phase == _PREPARE:
            if self._prepared_sent:
                return
            self._prepared_sent = True
            self._lock_and_commit_vote(cert, now, out)
            out.append(Broadcast(consensus_pb2.ConsensusMessage(prepared=cert)))
        else:
            # q COMMITs: final. Later COMMITs for this height find the height moved on.
            out.append(Broadcast(consensus_pb2.ConsensusMessage(decided=cert)))
            self._finalise(cert, now, out)

    def _adopt_lock(
        self, cert: consensus_pb2.VoteCertificate, now: float, out: list[Action]
    ) -> consensus_pb2.VoteCertificate | None:
        """Take a valid prepare certificate as the lock if it is higher; the verified
        certificate, or None when it is not valid."""
        checked = self._valid_cert(cert, _PREPARE, now, out)
        if checked is None:
            return None
        cert = checked
        if self._lock is None or cert.round > self._lock.round:
            self._lock = cert
            self._persist(out)
            self._arm_round_timer(now, out)
            if cert.block_hash not in self._blocks:
                self._fetch_locked_block(now, out)
        return cert

    def _on_prepared(
        self, cert: consensus_pb2.VoteCertificate, now: float, out: list[Action]
    ) -> None:
        checked = self._adopt_lock(cert, now, out)
        if checked is None:
            return
        cert = checked
        if cert.round > self._round and not (self._changing and cert.round < self._target):
            self._enter_round(cert.round, now, out)  # 2f+1 prepared in that round
        if cert.round == self._round and not self._changing:
            self._lock_and_commit_vote(cert, now, out)

    def _lock_and_commit_vote(
        self, cert: consensus_pb2.VoteCertificate, now: float, out: list[Action]
    ) -> None:
        if self._lock is None or self._lock.round < cert.round:
            self._lock = cert
        if self._lock.round != cert.round or self._lock.block_hash != cert.block_hash:
            return
        sig = self._sign_vote(Phase.COMMIT, cert.round, cert.block_hash, out)
        if sig is None:
            return
        primary = self._primary(cert.round)
        if primary == self.me:
            self._count_vote(self.me, _COMMIT, cert.block_hash, sig, now, out)
        else:
            out.append(
                Send(primary, _vote_msg(self.height, cert.round, _COMMIT, cert.block_hash, sig))
            )

    # --- finality --------------------------------------------------------------------------

    def _on_decided(
        self, sender: str, cert: consensus_pb2.VoteCertificate, now: float, out: list[Action]
    ) -> None:
        if self._blocks.get(cert.block_hash) is None:
            self._request_sync(sender, now, out)  # final somewhere, content missing here
            return
        checked = self._valid_cert(cert, _COMMIT, now, out)
        if checked is not None:
            self._finalise(checked, now, out)

    def _finalise(self, cert: consensus_pb2.VoteCertificate, now: float, out: list[Action]) -> None:
        final = block_pb2.Block()
        final.CopyFrom(self._blocks[cert.block_hash])
        qc = final.metadata.commit_certificate
        qc.round = cert.round
        qc.signatures.extend(cert.signatures)
        seed = self._valid.get(cert.block_hash)
        if seed is None:  # content restored from disk, never validated in this process
            verdict = self._verify_final(final)
            if not verdict.ok:
                return
            seed = verdict.seed
        self._commit(final, seed, now, out)

    def _verify_final(self, block: block_pb2.Block) -> certificate.Verdict:
        return certificate.verify_block(
            block,
            self.previous_hash,
            self.previous_seed,
            self.orderers,
            self.deps.verify_sig,
            expected_number=self.height,
            vrf_verify=self.deps.vrf_verify,
        )

    def _commit(self, block: block_pb2.Block, seed: bytes, now: float, out: list[Action]) -> None:
        out.append(Deliver(block, seed))
        ids = [self.deps.tx_id_of(tx) for tx in block.transactions]
        self._recent_final.update(ids)
        self._recent_heights.append(ids)
        if len(self._recent_heights) > _RECENT_FINAL:
            self._recent_final.difference_update(self._recent_heights.popleft())
        self.pool.discard(ids)
        self.height += 1
        self.previous_hash = block_hash(block.header)
        self.previous_seed = seed
        # Known now, while get_block may not return the block before the adapter executed
        # its Deliver: messages of the new height are validated within this same input.
        header = block_pb2.BlockHeader.FromString(block.header)
        self._previous_stamp = (self.height, block_time(header) or 0.0)
        self._reset_height()
        self._deadlines.pop(ROUND_TIMER, None)
        self._deadlines.pop(BATCH_TIMER, None)
        self._arm_round_timer(now, out)
        self._maybe_propose(now, out)
        future, self._future = self._future, []
        self._future_bytes = 0  # what it held is replayed now (and re-counted if held again)
        for sender, msg in future:
            self._dispatch(sender, msg, now, out)

    # --- rounds ----------------------------------------------------------------------------

    def _enter_round(self, round_: int, now: float, out: list[Action]) -> None:
        self._round = round_
        self._changing = False
        self._target = round_
        self._rc[self.me] = max(self._rc.get(self.me, 0), round_)
        self._reset_round()
        self._deadlines.pop(ROUND_TIMER, None)
        self._deadlines.pop(BATCH_TIMER, None)
        self._arm_round_timer(now, out, restart=True)
        self._maybe_propose(now, out)
        for r in [r for r in self._pending if r <= round_]:
            sender, p, received, size = self._pending.pop(r)
            self._pending_bytes -= size
            if r == round_:
                self._on_proposal(sender, p, now, out, received)

    def _round_change_msg(self, round_: int) -> consensus_pb2.ConsensusMessage:
        """This replica's signed ROUND_CHANGE for ``round_`` with its lock."""
        rc = consensus_pb2.RoundChange(height=self.height, round=round_)
        lock = None
        if self._lock is not None:
            rc.high_prepare.CopyFrom(self._lock)
            lock = (self._lock.round, self._lock.block_hash)
        rc.signature = self.deps.sign(round_change_bytes(self.height, round_, lock))
        return consensus_pb2.ConsensusMessage(round_change=rc)

    def _change_to(self, target: int, now: float, out: list[Action]) -> None:
        self._changing = True
        self._target = target
        self._rc[self.me] = target
        self._reset_round()
        self._persist(out)
        out.append(Broadcast(self._round_change_msg(target)))
        self._set_timer(ROUND_TIMER, self._timeout(target), now, out)
        self._check_round_quorum(now, out)

    def _on_round_timeout(self, now: float, out: list[Action]) -> None:
        if not self._has_work():
            return  # idle: nothing to order, no reason to replace the primary
        if self._changing:
            out.append(Broadcast(self._round_change_msg(self._target)))  # in case it was lost
            self._set_timer(ROUND_TIMER, self._timeout(self._target), now, out)
        else:
            self._change_to(min(self._round + 1, MAX_ROUND), now, out)
        if self._lock is not None and self._lock.block_hash not in self._blocks:
            self._fetch_locked_block(now, out)
        if len(self.pool):
            # Re-share the oldest pending transactions in case their forward was lost.
            oldest = [tx for _, tx in islice(self.pool.items(), self.config.max_batch_txs)]
            out.append(
                Broadcast(
                    consensus_pb2.ConsensusMessage(
                        tx_forward=consensus_pb2.TxForward(transactions=oldest)
                    )
                )
            )

    def _on_round_change(
        self, sender: str, rc: consensus_pb2.RoundChange, now: float, out: list[Action]
    ) -> None:
        """Order of checks, cheapest first: duplicate (nothing verified), rate, the sender's
        signature, then the carried certificate."""
        has_lock = rc.HasField("high_prepare")
        lock = (rc.high_prepare.round, rc.high_prepare.block_hash) if has_lock else None
        if lock is not None and len(lock[1]) != 32:
            return
        seen = (rc.round, lock[0] if lock is not None else -1)
        last = self._rc_seen.get(sender, (-1, -1))
        if seen < last:
            return
        if seen == last:
            # Same round and lock round again: a retransmission, or another lock of that
            # round (equivocation) worth one signature check.
            key = (evidence.ROUND_CHANGE, sender, rc.round, seen[1])
            if lock is None or not self.equivocations.conflicts(key, lock[1]):
                return
            if self._rc_limit.allow(sender, now) and self.deps.verify_sig(
                sender, round_change_bytes(rc.height, rc.round, lock), rc.signature
            ):
                self._observe(key, lock[1], evidence.round_change_statement(rc), now, out)
            return
        if not self._rc_limit.allow(sender, now):
            return
        if not self.deps.verify_sig(
            sender, round_change_bytes(rc.height, rc.round, lock), rc.signature
        ):
            return
        self._rc_seen[sender] = seen
        if lock is not None:
            key = (evidence.ROUND_CHANGE, sender, rc.round, lock[0])
            self._observe(key, lock[1], evidence.round_change_statement(rc), now, out)
            self._adopt_lock(rc.high_prepare, now, out)
        if rc.round <= self._rc.get(sender, -1):
            return
        self._rc[sender] = rc.round
        level = self._target if self._changing else self._round
        others = sorted(
            (r for o, r in self._rc.items() if o != self.me and r > level), reverse=True
        )
        if len(others) >= self.quorum.weak:
            # f+1 orderers, one of them honest, gave up on rounds below this one: join them.
            self._change_to(others[self.quorum.weak - 1], now, out)
            return
        self._check_round_quorum(now, out)

    def _check_round_quorum(self, now: float, out: list[Action]) -> None:
        rounds = sorted(self._rc.values(), reverse=True)
        if len(rounds) < self.quorum.q:
            return
        agreed = rounds[self.quorum.q - 1]  # 2f+1 orderers want this round or a later one
        if (self._changing and agreed >= self._target) or (
            not self._changing and agreed > self._round
        ):
            self._enter_round(agreed, now, out)

    # --- catch-up --------------------------------------------------------------------------

    def _request_sync(self, peer: str, now: float, out: list[Action]) -> None:
        if now < self._sync_quiet_until:
            return
        self._sync_quiet_until = now + self.config.round_timeout
        out.append(
            Send(
                peer,
                consensus_pb2.ConsensusMessage(
                    sync_request=consensus_pb2.SyncRequest(from_height=self.height)
                ),
            )
        )

    def _blocks_from(self, start: int) -> list[block_pb2.Block]:
        """Up to ``sync_batch`` final blocks and ``max_sync_bytes``, at least one."""
        blocks: list[block_pb2.Block] = []
        size = 0
        for number in range(start, min(start + self.config.sync_batch, self.height)):
            blk = self.deps.get_block(number)
            if blk is None:
                break
            size += blk.ByteSize()
            if blocks and size > self.config.max_sync_bytes:
                break
            blocks.append(blk)
        return blocks

    def _on_sync_request(
        self, sender: str, req: consensus_pb2.SyncRequest, now: float, out: list[Action]
    ) -> None:
        if req.from_height >= self.height or not self._sync_limit.allow(sender, now):
            return
        self._answer_sync(sender, req.from_height, out)

    def _answer_sync(self, sender: str, from_height: int, out: list[Action]) -> None:
        blocks = self._blocks_from(from_height)
        if blocks:
            out.append(
                Send(
                    sender,
                    consensus_pb2.ConsensusMessage(
                        sync_response=consensus_pb2.SyncResponse(blocks=blocks)
                    ),
                )
            )

    def _help_lagging(self, sender: str, height: int, now: float, out: list[Action]) -> None:
        if now < self._help_quiet_until.get(sender, float("-inf")):
            return
        self._help_quiet_until[sender] = now + self.config.round_timeout / 2
        self._answer_sync(sender, height, out)

    def _on_sync_response(
        self, sender: str, resp: consensus_pb2.SyncResponse, now: float, out: list[Action]
    ) -> None:
        progressed = False
        for blk in resp.blocks:
            try:
                number = block_pb2.BlockHeader.FromString(blk.header).number
            except DecodeError:
                return
            if number != self.height:
                continue
            verdict = self._verify_final(blk)
            if not verdict.ok or verdict.header is None:
                return
            self._record_proposal(blk, block_hash(blk.header), verdict.header, now, out)
            self._commit(blk, verdict.seed, now, out)
            progressed = True
        if progressed:
            # Responses are cut by count and by bytes: ask on until a response brings nothing.
            self._sync_quiet_until = float("-inf")
            self._request_sync(sender, now, out)

    # --- fetching a locked block -----------------------------------------------------------

    def _fetch_locked_block(self, now: float, out: list[Action]) -> None:
        """Locked on a block whose content this replica lacks (it adopted the certificate
        from a round change or proposal): ask f+1 of the certificate's signers, at least one
        of them honest, each of which keeps the blocks it prepared until the height is
        final. Once per half round timeout; the next attempt asks the next f+1."""
        lock = self._lock
        if lock is None or lock.block_hash in self._blocks or now < self._fetch_quiet_until:
            return
        signers = sorted({c.orderer for c in lock.signatures} - {self.me})
        if not signers:
            return
        self._fetch_quiet_until = now + self.config.round_timeout / 2
        start = self._fetch_attempt * self.quorum.weak
        self._fetch_attempt += 1
        request = consensus_pb2.ConsensusMessage(
            block_fetch_request=consensus_pb2.BlockFetchRequest(
                height=self.height, block_hash=lock.block_hash
            )
        )
        for i in range(min(self.quorum.weak, len(signers))):
            out.append(Send(signers[(start + i) % len(signers)], request))

    def _on_block_fetch_request(
        self, sender: str, req: consensus_pb2.BlockFetchRequest, now: float, out: list[Action]
    ) -> None:
        block = self._blocks.get(req.block_hash)
        if block is None or not self._fetch_limit.allow(sender, now):
            return
        response = consensus_pb2.BlockFetchResponse(height=self.height, block=block)
        out.append(Send(sender, consensus_pb2.ConsensusMessage(block_fetch_response=response)))

    def _on_block_fetch_response(
        self, resp: consensus_pb2.BlockFetchResponse, now: float, out: list[Action]
    ) -> None:
        lock = self._lock
        bh = block_hash(resp.block.header)
        if lock is None or bh != lock.block_hash or bh in self._blocks:
            return  # only the locked block is wanted; its hash is all the trust needed
        if self._validate(resp.block, now) is not None:
            return
        header = block_pb2.BlockHeader.FromString(resp.block.header)  # parses: validated
        self._record_proposal(resp.block, bh, header, now, out)
        self._blocks[bh] = resp.block
        for tx in resp.block.transactions:
            self._pool_add(tx, now, validated=True)
        self._persist(out)  # the lock's block is kept with it
        self._maybe_propose(now, out)
