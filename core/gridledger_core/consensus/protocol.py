"""One orderer replica of the lottery-primary co-sign protocol, as a pure state machine.

No sockets, clocks, threads or randomness: every input carries ``now`` (seconds, from any
monotonic clock) and every output is an action (see ``actions``) that the adapter executes.

Protocol, per height h (the number of the next block):

1. The lottery primary of (h, r) proposes a pre-block (its signature over the header) —
   in round 0 when its pool reaches ``max_batch_txs`` or ``max_batch_bytes`` or the oldest
   pending transaction waited ``max_batch_wait``; in later rounds at once. If it holds a
   lock it re-proposes the locked block with its prepare certificate instead.
2. Replicas validate it (primary entitled, height, previous hash, data hash, VRF proof,
   proposer signature, every transaction through ``validate_tx``, no tx id twice in the
   block or already on the chain) and send a PREPARE co-signature to the primary, unless
   they are locked on another block and the proposal carries no prepare certificate of a
   round at least as high as their lock.
3. 2f+1 PREPAREs make a prepare certificate; the primary broadcasts it. Replicas lock on it
   (the lock is the highest prepare certificate seen at h) and send a COMMIT co-signature.
4. 2f+1 COMMITs make the commit certificate, the block's QuorumCertificate: final.

Safety: if B is final at round r, at least f+1 honest replicas are locked on B with round r.
They prepare another block only when shown a prepare certificate of round >= r for it, and
no such certificate can form (it would need one of them), so no other block ever gets a
prepare certificate, hence a commit certificate, at h. Each replica persists its votes and
lock before its signatures leave (``Persist`` before ``Send``) and never signs two different
blocks in one (height, round, phase), also across restarts.

Liveness: without progress a replica times out (``round_timeout`` * 2**r, capped), stops
voting in round r and broadcasts ROUND_CHANGE(h, r+1) with its lock. It enters round R on
ROUND_CHANGEs for >= R from 2f+1 orderers, joins the (f+1)-th highest round announced by
others, re-sends its ROUND_CHANGE every timeout, and enters R directly on a valid prepare
certificate of round R. Locks travel in ROUND_CHANGEs, so the next primary learns them.
Timers run only while there is work (pending transactions, a proposal, a lock).

Transactions: every orderer pools what its clients submit and forwards it once to all peers
(``TxForward``), so any orderer that becomes primary can propose it and every replica's
round timer guards against a primary that censors or freezes. The pool is not persisted:
clients resubmit what a crash lost (Broadcast is idempotent by tx id).

Catch-up: a message from a higher height, or a commit certificate for a block this replica
lacks, triggers a SyncRequest; final blocks come back in SyncResponses and are checked with
``certificate.verify_block``. A replica answers a ROUND_CHANGE or proposal from a lower
height with the blocks the sender misses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

from google.protobuf.message import DecodeError

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import certificate, lottery
from gridledger_core.consensus.actions import Action, Broadcast, Deliver, Persist, Send, SetTimer
from gridledger_core.consensus.pool import TxPool
from gridledger_core.consensus.quorum import Quorum
from gridledger_core.consensus.signing import Phase, block_hash, data_hash, signing_bytes

STATE_KEY = "consensus/state"
BLOCKS_KEY = "consensus/blocks"
ROUND_TIMER = "round"
BATCH_TIMER = "batch"

_PREPARE = consensus_pb2.VOTE_PHASE_PREPARE
_COMMIT = consensus_pb2.VOTE_PHASE_COMMIT
_FUTURE_BUFFER = 256  # messages kept for height h+1 while still at h
_ROUND_WINDOW = 64  # proposals kept for rounds this far ahead


@dataclass(frozen=True)
class ReplicaConfig:
    orderer_id: str
    # Orderer id -> 32-byte Ed25519 public key (also its VRF key), from the genesis config.
    orderers: Mapping[str, bytes]
    max_batch_txs: int = 500
    max_batch_bytes: int = 1 << 20
    max_batch_wait: float = 0.05
    round_timeout: float = 1.0
    # How far ahead of this orderer's clock a proposed block's timestamp may be (seconds).
    max_clock_skew: float = 5.0
    max_backoff_exponent: int = 5
    max_pool_txs: int = 100_000
    sync_batch: int = 16


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


@dataclass(frozen=True)
class ChainTip:
    """Where ordering resumes: the next block's number, previous hash and previous seed."""

    height: int
    previous_hash: bytes
    previous_seed: bytes


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
        known_tx_ids: Iterable[bytes] = (),
        persisted: Mapping[str, bytes] | None = None,
    ) -> None:
        if config.orderer_id not in config.orderers:
            raise ValueError(f"{config.orderer_id!r} is not in the orderer set")
        self.config = config
        self.deps = deps
        self.me = config.orderer_id
        self.orderers = dict(config.orderers)
        self.quorum = Quorum(len(self.orderers))
        self.known_ids: set[bytes] = set(known_tx_ids)
        self.pool = TxPool(config.max_pool_txs)
        self.height = tip.height
        self.previous_hash = tip.previous_hash
        self.previous_seed = tip.previous_seed
        self._deadlines: dict[str, float] = {}
        self._sync_quiet_until = float("-inf")
        self._help_quiet_until: dict[str, float] = {}
        self._future: list[tuple[str, consensus_pb2.ConsensusMessage]] = []
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
        return tx_id in self.pool or tx_id in self.known_ids

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
            self._on_sync_request(sender, msg.sync_request, out)
            return
        if kind == "sync_response":
            self._on_sync_response(sender, msg.sync_response, now, out)
            return
        body = getattr(msg, kind) if kind else None
        if body is None:
            return
        height = body.height
        if height < self.height:
            if kind in ("round_change", "proposal"):
                self._help_lagging(sender, height, now, out)
            return
        if height > self.height:
            if height == self.height + 1 and len(self._future) < _FUTURE_BUFFER:
                self._future.append((sender, msg))
            self._request_sync(sender, now, out)
            return
        if kind == "proposal":
            self._on_proposal(sender, msg.proposal, now, out)
        elif kind == "vote":
            self._on_vote(sender, msg.vote, now, out)
        elif kind == "prepared":
            self._on_prepared(msg.prepared, now, out)
        elif kind == "decided":
            self._on_decided(sender, msg.decided, now, out)
        elif kind == "round_change":
            self._on_round_change(sender, msg.round_change, now, out)

    # --- per-height state ------------------------------------------------------------------

    def _reset_height(self) -> None:
        self._round = 0
        self._changing = False
        self._target = 0
        self._last_prepare: consensus_pb2.SignedVote | None = None
        self._last_commit: consensus_pb2.SignedVote | None = None
        self._lock: consensus_pb2.VoteCertificate | None = None
        self._blocks: dict[bytes, block_pb2.Block] = {}  # pre-blocks seen at this height
        self._valid: dict[bytes, bytes] = {}  # block hash -> seed, for validated pre-blocks
        self._rc: dict[str, int] = {}  # highest ROUND_CHANGE round per orderer
        self._pending: dict[int, tuple[str, consensus_pb2.Proposal]] = {}
        self._persisted_blocks: frozenset[bytes] = frozenset()
        self._primaries: dict[int, str] = {}  # round -> lottery primary at this height
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
        wanted = {
            v.block_hash
            for v in (self._last_prepare, self._lock)
            if v is not None and v.block_hash in self._blocks
        }
        if wanted != self._persisted_blocks:
            kept = consensus_pb2.ReplicaBlocks(blocks=[self._blocks[h] for h in sorted(wanted)])
            out.append(Persist(BLOCKS_KEY, kept.SerializeToString()))
            self._persisted_blocks = frozenset(wanted)
        out.append(Persist(STATE_KEY, state.SerializeToString()))

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
        if self._changing:
            self._rc[self.me] = self._target

    # --- transactions ----------------------------------------------------------------------

    def _pool_add(
        self, tx: bytes, now: float, *, validated: bool = False, force: bool = False
    ) -> bool:
        """Pool a transaction not seen before; garbage never enters, so it never keeps the
        round timer running. ``force``: even when the pool is full."""
        tx_id = self.deps.tx_id_of(tx)
        if tx_id in self.known_ids or tx_id in self.pool or (self.pool.full and not force):
            return False
        if not validated and self.deps.validate_tx(tx) is not True:
            return False
        return self.pool.add(tx_id, tx, now, force=force)

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
        elif self._lock is not None:
            block = self._blocks.get(self._lock.block_hash)
            if block is None:
                return  # locked without the content: another primary will re-propose it
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
        for _, tx in self.pool.items():  # validated when pooled
            if len(txs) >= self.config.max_batch_txs:
                break
            if size + len(tx) > self.config.max_batch_bytes and txs:
                break
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
        stamp = verdict.header.timestamp.ToNanoseconds() / 1e9
        if stamp > now + self.config.max_clock_skew:
            return f"timestamp {stamp:.3f} is ahead of this orderer's clock"
        if stamp < self._previous_timestamp():
            return "timestamp is before the previous block's"
        seen: set[bytes] = set()
        for tx in block.transactions:
            tx_id = self.deps.tx_id_of(tx)
            if tx_id in seen or tx_id in self.known_ids:
                return f"duplicate tx id {tx_id.hex()}"
            seen.add(tx_id)
            if self.pool.get(tx_id) == tx:
                continue  # these exact bytes were validated when they entered the pool
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
            stamp = 0.0
            if previous is not None:
                header = block_pb2.BlockHeader.FromString(previous.header)
                stamp = header.timestamp.ToNanoseconds() / 1e9
            self._previous_stamp = (self.height, stamp)
        return self._previous_stamp[1]

    def _valid_cert(self, cert: consensus_pb2.VoteCertificate, phase: int) -> bool:
        if cert.height != self.height or cert.phase != phase or len(cert.block_hash) != 32:
            return False
        signed = signing_bytes(Phase(phase), cert.height, cert.round, cert.block_hash)
        return certificate.check_signatures(
            cert.signatures, signed, self.orderers, self.deps.verify_sig
        ).ok

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
        else:
            self._last_commit = vote
        self._persist(out)
        return sig

    def _on_proposal(
        self, sender: str, p: consensus_pb2.Proposal, now: float, out: list[Action]
    ) -> None:
        if sender != self._primary(p.round):
            return  # not entitled to propose in that round
        if p.round < self._round or (self._changing and p.round < self._target):
            return
        if p.round > self._round or self._changing:
            if self._changing and p.round == self._target:
                self._enter_round(p.round, now, out)  # the round this replica asked for
            elif p.round <= self._round + _ROUND_WINDOW:
                self._pending[p.round] = (sender, p)
                return
            else:
                return
        block = p.block
        bh = block_hash(block.header)
        if self._validate(block, now) is not None:
            return
        header = block_pb2.BlockHeader.FromString(block.header)
        if header.round > p.round or (header.round == p.round and header.proposer != sender):
            return
        self._blocks[bh] = block
        if p.HasField("justify") and p.justify.block_hash == bh:
            self._adopt_lock(p.justify, now, out)
        if self._lock is not None and self._lock.block_hash != bh:
            return  # locked elsewhere and not shown a prepare certificate at least as high
        for tx in block.transactions:
            self._pool_add(tx, now, validated=True)  # so a later primary can propose them
        self._arm_round_timer(now, out)
        sig = self._sign_vote(Phase.PREPARE, p.round, bh, out)
        if sig is not None:
            out.append(Send(sender, _vote_msg(self.height, p.round, _PREPARE, bh, sig)))

    def _on_vote(self, sender: str, v: consensus_pb2.Vote, now: float, out: list[Action]) -> None:
        if v.round != self._round or self._changing or v.block_hash != self._proposed:
            return
        if v.phase not in (_PREPARE, _COMMIT):
            return
        phase = Phase.PREPARE if v.phase == _PREPARE else Phase.COMMIT
        signed = signing_bytes(phase, self.height, v.round, v.block_hash)
        if not self.deps.verify_sig(sender, signed, v.signature):
            return
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
    ) -> bool:
        """Take a valid prepare certificate as the lock if it is higher; True if it is valid."""
        if not self._valid_cert(cert, _PREPARE):
            return False
        if self._lock is None or cert.round > self._lock.round:
            self._lock = cert
            self._persist(out)
            self._arm_round_timer(now, out)
        return True

    def _on_prepared(
        self, cert: consensus_pb2.VoteCertificate, now: float, out: list[Action]
    ) -> None:
        if not self._adopt_lock(cert, now, out):
            return
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
        if self._valid_cert(cert, _COMMIT):
            self._finalise(cert, now, out)

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
        self.known_ids.update(ids)
        self.pool.discard(ids)
        self.height += 1
        self.previous_hash = block_hash(block.header)
        self.previous_seed = seed
        self._reset_height()
        self._deadlines.pop(ROUND_TIMER, None)
        self._deadlines.pop(BATCH_TIMER, None)
        self._arm_round_timer(now, out)
        self._maybe_propose(now, out)
        future, self._future = self._future, []
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
            sender, p = self._pending.pop(r)
            if r == round_:
                self._on_proposal(sender, p, now, out)

    def _round_change_msg(self, round_: int) -> consensus_pb2.ConsensusMessage:
        rc = consensus_pb2.RoundChange(height=self.height, round=round_)
        if self._lock is not None:
            rc.high_prepare.CopyFrom(self._lock)
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
            self._change_to(self._round + 1, now, out)
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
        if rc.HasField("high_prepare"):
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
        blocks: list[block_pb2.Block] = []
        for number in range(start, min(start + self.config.sync_batch, self.height)):
            blk = self.deps.get_block(number)
            if blk is None:
                break
            blocks.append(blk)
        return blocks

    def _on_sync_request(
        self, sender: str, req: consensus_pb2.SyncRequest, out: list[Action]
    ) -> None:
        blocks = self._blocks_from(req.from_height)
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
        self._on_sync_request(sender, consensus_pb2.SyncRequest(from_height=height), out)

    def _on_sync_response(
        self, sender: str, resp: consensus_pb2.SyncResponse, now: float, out: list[Action]
    ) -> None:
        for blk in resp.blocks:
            try:
                number = block_pb2.BlockHeader.FromString(blk.header).number
            except DecodeError:
                return
            if number != self.height:
                continue
            verdict = self._verify_final(blk)
            if not verdict.ok:
                return
            self._commit(blk, verdict.seed, now, out)
        if len(resp.blocks) >= self.config.sync_batch:
            self._sync_quiet_until = float("-inf")
            self._request_sync(sender, now, out)
