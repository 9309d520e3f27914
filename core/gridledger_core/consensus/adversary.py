"""A byzantine adversary for the seeded simulator: up to f identities, real keys, no scruples.

Each byzantine identity runs an honest ``Replica`` inside the simulation (its *shadow*),
fed with every message the identity receives, so the adversary always knows the height,
round, pool, lock and chain an honest orderer would have. Whatever the shadow wants to
send passes through the adversary first, which rewrites, multiplies, delays or drops it,
and adds messages of its own, signed with the identity's real key (the simulator's
``Crypto`` signer and VRF prover) over the same bytes an honest replica signs
(``signing.signing_bytes``, ``block_hash``, ``data_hash``, ``lottery.alpha``). The
identities collude: they share certificates and co-sign each other's blocks.

Tactics (a seed draws a set; each decision within it is drawn again per message):
- equivocate: as primary, different signed pre-blocks for one (height, round) to different
  recipients; different round changes (other locks) to different recipients; another
  pre-block than the one asked for in block fetches;
- double-vote: PREPARE every proposal and COMMIT every prepare certificate it sees, whatever
  it signed or is locked on;
- ignore-lock: as primary, a fresh block instead of the block it is locked on;
- withhold: keep the prepare and commit certificates it forms (show them to some peers
  only, or to none) and reveal them later, in a round change or as is; while holding a
  prepare certificate back at a height it votes for nothing else there, and once it saw
  honest replicas restart there (their SyncRequests) it reveals the certificate in a
  ROUND_CHANGE and, as the seed says, falls silent;
- stall: the same play made deliberate (the stall of issue 12): the first prepare
  certificate it forms at a height is shown to nobody, it votes for nothing else there,
  and once every honest replica restarted there it reveals the certificate in a
  ROUND_CHANGE and falls silent, so the block's content must come from honest replicas;
- selective: send each message to a chosen subset of its peers only;
- backdate: stamp its blocks in the past (the previous block's time, far back, negative),
  too far ahead, or at extreme times;
- replay: re-send old messages, its own and certificates it received, also of past heights;
- flood: bursts of many, repeated and oversized messages, and junk filling a replica's
  buffer for the next height (bounded so that a schedule stays simulable: the transport's
  size limits are not part of what is simulated);
- garbage: syntactically valid nonsense: random hashes and signatures, unknown phases,
  extreme heights and rounds (2**64-1, 2**32-1, also in properly signed pre-blocks),
  malformed headers, certificates with duplicate or unknown co-signers, forged sync
  responses, lying or junk block fetches, empty messages;
- fork: every honest replica gets a block's prepare certificate; its commit certificate
  is held back (also from the other colluders, which stay at that height and, as primary,
  propose a conflicting block) until a conflicting block is proposed, then shown to one
  honest replica only while the coalition votes for the conflicting block (which only
  replicas that ignore their lock can finalise);
- silent: sends nothing at all.

After the heal (the end of the honest faults) the adversary goes silent or keeps going,
as the seed says. It never forges another identity's signature: that is outside the model.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import lottery
from gridledger_core.consensus.actions import Broadcast, Send
from gridledger_core.consensus.protocol import Replica
from gridledger_core.consensus.signing import Phase, block_hash, data_hash, signing_bytes

if TYPE_CHECKING:
    from gridledger_core.consensus.simulation import Instance, Simulation

_PREPARE = consensus_pb2.VOTE_PHASE_PREPARE
_COMMIT = consensus_pb2.VOTE_PHASE_COMMIT
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
_LOG = 200  # messages kept for replay
# Block fetch (a replica locked on a block it lacks asks the certificate's signers) exists
# from the consensus.proto revision that added it; the adversary lies in it when it does.
_HAS_FETCH = "block_fetch_response" in consensus_pb2.ConsensusMessage.DESCRIPTOR.fields_by_name
_FLOOD_TXS = 240  # valid transactions a whole schedule's floods may add


class Tactic(StrEnum):
    EQUIVOCATE = "equivocate"
    DOUBLE_VOTE = "double-vote"
    IGNORE_LOCK = "ignore-lock"
    WITHHOLD = "withhold"
    SELECTIVE = "selective"
    BACKDATE = "backdate"
    REPLAY = "replay"
    FLOOD = "flood"
    GARBAGE = "garbage"
    FORK = "fork"
    STALL = "stall"
    SILENT = "silent"


def craft_block(
    sim: Simulation,
    oid: str,
    height: int,
    round_: int,
    previous_hash: bytes,
    previous_seed: bytes,
    txs: list[bytes],
    stamp: float,
) -> block_pb2.Block:
    """A pre-block exactly as an honest primary builds one, with any content and time."""
    proof = sim.crypto.vrf_prover(oid)(lottery.alpha(previous_seed, height))
    header = block_pb2.BlockHeader(
        number=height,
        previous_hash=previous_hash,
        data_hash=data_hash(txs),
        round=round_,
        proposer=oid,
        vrf_proof=proof,
    )
    # Set the fields directly: protobuf's own range check must not stop extreme times.
    nanos = int(stamp * 1e9)
    header.timestamp.seconds, header.timestamp.nanos = divmod(nanos, 1_000_000_000)
    header_bytes = header.SerializeToString()
    block = block_pb2.Block(header=header_bytes, transactions=txs)
    block.metadata.proposer_signature = sim.crypto.signer(oid)(
        signing_bytes(Phase.PROPOSAL, height, round_, block_hash(header_bytes))
    )
    return block


def signed_round_change(
    shadow: Replica, round_: int, cert: consensus_pb2.VoteCertificate | None
) -> consensus_pb2.ConsensusMessage:
    """A ROUND_CHANGE of the shadow's identity for its height, carrying ``cert`` (or no
    lock), built and signed by the shadow's own code so it is exactly as an honest one."""
    saved = shadow._lock
    try:
        shadow._lock = cert
        return shadow._round_change_msg(round_)
    finally:
        shadow._lock = saved


def p_forked(adversary: Adversary, p: consensus_pb2.Proposal) -> bool:
    """A proposal at a height where the coalition holds a commit certificate back."""
    return p.height in adversary.forked and len(p.block.header) > 0


def _cert_key(cert: consensus_pb2.VoteCertificate) -> tuple[int, int, int, bytes]:
    return (cert.phase, cert.height, cert.round, cert.block_hash)


class Adversary:
    def __init__(
        self,
        sim: Simulation,
        tactics: Iterable[Tactic],
        *,
        rng: random.Random | None = None,
        silent_after_heal: bool = False,
    ) -> None:
        self.sim = sim
        self.rng = rng or random.Random(f"adversary/{sim.seed}")
        self.ids = list(sim.byzantine_ids)
        self.honest_ids = [oid for oid in sim.ids if oid not in self.ids]
        self.tactics = set(tactics)
        self.silent_after_heal = silent_after_heal
        self.silent = Tactic.SILENT in self.tactics
        self.mute_after_reveal = self.rng.random() < 0.5
        # (height, round, block hash) -> the colluding primary that proposed it
        self.proposed: dict[tuple[int, int, bytes], str] = {}
        self.votes: dict[tuple[int, int, int, bytes], dict[str, bytes]] = {}
        self.published: set[tuple[int, int, int, bytes]] = set()
        self.withheld: list[consensus_pb2.VoteCertificate] = []
        self.certs_seen: list[consensus_pb2.VoteCertificate] = []
        self.log: deque[consensus_pb2.ConsensusMessage] = deque(maxlen=_LOG)
        self.forked: dict[int, bytes] = {}  # height -> block whose commit cert is held
        self.fork_pending: dict[int, tuple[str, consensus_pb2.ConsensusMessage]] = {}
        self.revealed: set[int] = set()  # heights whose held certificate was shown
        self.restarted: dict[int, set[str]] = {}  # height -> peers seen (re)starting there
        self.flood_txs = 0
        self.counter = 0
        for tactic in self.tactics:
            sim.features.add(f"byz-{tactic}")

    @classmethod
    def drawn(cls, sim: Simulation) -> Adversary:
        """Tactics and after-heal behaviour drawn from the schedule's seed."""
        rng = random.Random(f"adversary/{sim.seed}")
        if rng.random() < 0.08:
            tactics = {Tactic.SILENT}
        else:
            pool = [t for t in Tactic if t is not Tactic.SILENT]
            tactics = {t for t in pool if rng.random() < 0.45} or {rng.choice(pool)}
        silent_after = rng.random() < 0.35
        if silent_after:
            sim.features.add("byz-silent-after-heal")
        return cls(sim, tactics, rng=rng, silent_after_heal=silent_after)

    # --- helpers ---------------------------------------------------------------------------

    def has(self, tactic: Tactic) -> bool:
        return not self.silent and tactic in self.tactics

    def chance(self, tactic: Tactic, p: float) -> bool:
        return self.has(tactic) and self.rng.random() < p

    def inst(self, oid: str) -> Instance:
        return self.sim.instances[oid]

    def shadow(self, oid: str) -> Replica | None:
        return self.sim.instances[oid].replica

    def send(self, oid: str, to: str, msg: consensus_pb2.ConsensusMessage, delay: float = 0.0
             ) -> None:
        """Put one message of identity ``oid`` on the network (faults apply)."""
        if self.silent or to == oid:
            return
        self.sim.transmit(self.inst(oid), to, msg, extra_delay=delay)

    def send_many(self, oid: str, dsts: Iterable[str], msg: consensus_pb2.ConsensusMessage
                  ) -> None:
        for to in self.targets(dsts):
            self.send(oid, to, msg, self._delay())
        self.log.append(msg)

    def targets(self, dsts: Iterable[str]) -> list[str]:
        dsts = list(dsts)
        if self.chance(Tactic.SELECTIVE, 0.6) and dsts:
            return self.rng.sample(dsts, self.rng.randint(0, len(dsts)))
        return dsts

    def _delay(self) -> float:
        if self.chance(Tactic.WITHHOLD, 0.2) or self.chance(Tactic.SELECTIVE, 0.2):
            return self.rng.uniform(0.05, 1.5)
        return 0.0

    def holding(self, height: int) -> bool:
        """True when a prepare certificate of ``height`` is being held back."""
        return (self.has(Tactic.WITHHOLD) or self.has(Tactic.STALL)) and any(
            c.height == height and c.phase == _PREPARE for c in self.withheld
        )

    def hides(self, cert: consensus_pb2.VoteCertificate | None) -> bool:
        """True when ``cert`` is one the coalition holds back (and has not revealed)."""
        if cert is None or not (self.has(Tactic.WITHHOLD) or self.has(Tactic.STALL)):
            return False
        return cert.height not in self.revealed and any(
            _cert_key(c) == _cert_key(cert) for c in self.withheld
        )

    def others(self, oid: str) -> list[str]:
        return [o for o in self.sim.ids if o != oid]

    def primary_of(self, oid: str, height: int, round_: int) -> str | None:
        shadow = self.shadow(oid)
        if shadow is None or shadow.height != height:
            return None
        return lottery.primary(shadow.orderers, shadow.previous_seed, height, round_)

    def sign_vote(self, oid: str, phase: int, height: int, round_: int, bh: bytes) -> bytes:
        return self.sim.crypto.signer(oid)(signing_bytes(Phase(phase), height, round_, bh))

    def vote_msg(self, oid: str, phase: int, height: int, round_: int, bh: bytes
                 ) -> consensus_pb2.ConsensusMessage:
        sig = self.sign_vote(oid, phase, height, round_, bh)
        return consensus_pb2.ConsensusMessage(
            vote=consensus_pb2.Vote(
                height=height, round=round_, phase=phase, block_hash=bh, signature=sig
            )
        )

    def own_tx(self) -> bytes:
        """An endorsed transaction of the adversary's own organisation (it has an endorser)."""
        self.counter += 1
        return b"ok:byz:%d:%d" % (self.sim.seed, self.counter)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.sim.schedule(self.sim.now + self.rng.uniform(0.05, 0.3), self.tick)

    def on_heal(self) -> None:
        """Honest replicas just restarted: the moment to show withheld certificates (a
        replica restarted from disk may no longer hold the block a certificate names)."""
        if self.has(Tactic.WITHHOLD) and self.rng.random() < 0.7:
            for oid in self.ids:
                self.sim.schedule(self.sim.now + self.rng.uniform(0.0, 0.5),
                                  lambda oid=oid: self.reveal(oid))
        if self.silent_after_heal:
            self.sim.schedule(self.sim.now + 0.6, self.go_silent)

    def go_silent(self) -> None:
        self.silent = True

    # --- what the shadows want to send ---------------------------------------------------------

    def on_output(self, inst: Instance, action: Send | Broadcast) -> None:
        if self.silent:
            return
        oid = inst.orderer
        msg = action.message
        dsts = [action.to] if isinstance(action, Send) else self.others(oid)
        kind = msg.WhichOneof("body")
        if kind == "proposal":
            self.propose(oid, msg.proposal, dsts)
        elif kind in ("prepared", "decided"):
            self.publish(oid, getattr(msg, kind))
        elif kind == "round_change":
            self.round_change(oid, msg.round_change, dsts)
        elif kind == "sync_response" and self.has(Tactic.FORK) and any(
            block_hash(b.header) in self.forked.values() for b in msg.sync_response.blocks
        ):
            return  # the block final at a few honest replicas only stays theirs
        elif kind == "block_fetch_response":
            self.answer_fetch(oid, msg, dsts)
        elif kind == "vote" and self.has(Tactic.WITHHOLD) and self.rng.random() < (
            0.9 if self.holding(msg.vote.height) else 0.15
        ):
            return  # holding a certificate back at this height: help no other block to one
        else:
            self.send_many(oid, dsts, msg)

    def propose(self, oid: str, p: consensus_pb2.Proposal, dsts: list[str]) -> None:
        shadow = self.shadow(oid)
        if shadow is None or shadow.height != p.height:
            self.send_many(oid, dsts, consensus_pb2.ConsensusMessage(proposal=p))
            return
        h, r = p.height, p.round
        variants: list[tuple[block_pb2.Block, consensus_pb2.VoteCertificate | None]] = []
        justify = p.justify if p.HasField("justify") else None
        forking = self.has(Tactic.FORK) and h in self.forked
        if self.hides(justify):
            return  # re-proposing would show the certificate held back: stay quiet
        if forking or (justify is not None and self.chance(Tactic.IGNORE_LOCK, 0.7)):
            variants.append((self.fresh_block(oid, shadow, r, self.sim.now), None))
        elif self.chance(Tactic.BACKDATE, 0.7):
            variants.append((self.fresh_block(oid, shadow, r, self.bad_stamp(shadow)), None))
        else:
            variants.append((p.block, justify))
        if self.has(Tactic.EQUIVOCATE):
            for _ in range(self.rng.randint(1, 2)):
                stamp = self.bad_stamp(shadow) if self.has(Tactic.BACKDATE) else self.sim.now
                variants.append((self.fresh_block(oid, shadow, r, stamp), None))
        if self.chance(Tactic.GARBAGE, 0.3):
            bad = self.fresh_block(oid, shadow, r, self.sim.now, extra=(b"bad:unendorsed",))
            variants.append((bad, None))
        for block, _ in variants:
            self.proposed[(h, r, block_hash(block.header))] = oid
        msgs = []
        for block, just in variants:
            prop = consensus_pb2.Proposal(height=h, round=r, block=block)
            if just is not None:
                prop.justify.CopyFrom(just)
            msgs.append(consensus_pb2.ConsensusMessage(proposal=prop))
        if self.has(Tactic.FORK):
            self.sim.schedule(self.sim.now + 0.005,
                              lambda: self.fork_strike(h, block_hash(variants[0][0].header)))
        for to in self.targets(dsts):
            if to in self.ids:
                for m in msgs:  # colluders see every variant
                    self.send(oid, to, m)
            else:
                self.send(oid, to, self.rng.choice(msgs), self._delay())
        self.log.extend(msgs)
        # The coalition co-signs its own blocks at once.
        for block, _ in variants:
            bh = block_hash(block.header)
            for colluder in self.ids:
                self.count(oid, colluder, _PREPARE, h, r, bh,
                           self.sign_vote(colluder, _PREPARE, h, r, bh))

    def fresh_block(
        self, oid: str, shadow: Replica, round_: int, stamp: float, extra: tuple[bytes, ...] = ()
    ) -> block_pb2.Block:
        pooled = [tx for _, tx in shadow.pool.items()][:8]
        self.rng.shuffle(pooled)
        txs = pooled[: self.rng.randint(0, 4)]
        if not txs or self.rng.random() < 0.3:
            txs.append(self.own_tx())
        txs.extend(extra)
        return craft_block(
            self.sim, oid, shadow.height, round_, shadow.previous_hash, shadow.previous_seed,
            txs, stamp,
        )

    def bad_stamp(self, shadow: Replica) -> float:
        now, skew = self.sim.now, self.sim.max_clock_skew
        previous = 0.0
        if shadow.height > 0:
            blk = shadow.deps.get_block(shadow.height - 1)
            if blk is not None:
                stamp = block_pb2.BlockHeader.FromString(blk.header).timestamp
                previous = stamp.seconds + stamp.nanos / 1e9
        return self.rng.choice(
            (
                previous,  # as old as the rules ever allowed
                previous,
                now - skew * self.rng.uniform(1.5, 20.0),  # backdated
                now - skew * 0.5,  # within the skew: legal
                now + skew * 0.9,  # ahead, within the skew: legal
                now + skew * 3.0,  # too far ahead
                0.0,
                -1e9,
                float(2**40),  # beyond what a protobuf Timestamp may hold
                -float(2**40),
            )
        )

    def answer_fetch(
        self, oid: str, msg: consensus_pb2.ConsensusMessage, dsts: list[str]
    ) -> None:
        """A peer asked for a block this identity prepared: withhold it, or send another
        block of that height (a real, signed pre-block, but not the one asked for)."""
        if self.chance(Tactic.WITHHOLD, 0.8):
            return
        shadow = self.shadow(oid)
        if shadow is not None and (self.chance(Tactic.EQUIVOCATE, 0.5)
                                   or self.chance(Tactic.GARBAGE, 0.5)):
            resp = msg.block_fetch_response
            fake = self.fresh_block(oid, shadow, shadow.round, self.sim.now)
            lie = type(resp)(height=resp.height, block=fake)
            msg = consensus_pb2.ConsensusMessage(block_fetch_response=lie)
        self.send_many(oid, dsts, msg)

    def round_change(self, oid: str, rc: consensus_pb2.RoundChange, dsts: list[str]) -> None:
        shadow = self.shadow(oid)
        if shadow is None or shadow.height != rc.height:
            self.send_many(oid, dsts, consensus_pb2.ConsensusMessage(round_change=rc))
            return
        lock = rc.high_prepare if rc.HasField("high_prepare") else None
        choices: list[consensus_pb2.VoteCertificate | None] = [lock]
        here = [c for c in self.withheld + self.certs_seen
                if c.height == rc.height and c.phase == _PREPARE]
        if self.hides(lock):
            choices = [None]  # do not let a held-back lock out through round changes
        if not self.has(Tactic.WITHHOLD):  # only withhold shows held-back ones at random
            here = [c for c in here if not self.hides(c)]
        if self.has(Tactic.WITHHOLD) or self.has(Tactic.EQUIVOCATE):
            choices += [None, *here]
        rounds = [rc.round]
        if self.has(Tactic.GARBAGE):
            rounds += [rc.round + self.rng.randint(1, 100), U32_MAX]
        per_recipient = self.has(Tactic.EQUIVOCATE)
        pick = (self.rng.choice(choices), self.rng.choice(rounds))
        for to in self.targets(dsts):
            if to in self.ids:
                cert, round_ = lock, rc.round
            else:
                cert, round_ = (
                    (self.rng.choice(choices), self.rng.choice(rounds)) if per_recipient else pick
                )
            if cert is lock and round_ == rc.round:
                msg = consensus_pb2.ConsensusMessage(round_change=rc)
            else:
                msg = signed_round_change(shadow, round_, cert)
            self.send(oid, to, msg, self._delay())
            self.log.append(msg)

    # --- certificates ------------------------------------------------------------------------

    def count(
        self, primary: str, voter: str, phase: int, h: int, r: int, bh: bytes, sig: bytes
    ) -> None:
        key = (phase, h, r, bh)
        votes = self.votes.setdefault(key, {})
        votes.setdefault(voter, sig)
        if len(votes) < self.sim.quorum.q or key in self.published:
            return
        cert = consensus_pb2.VoteCertificate(
            height=h,
            round=r,
            phase=phase,
            block_hash=bh,
            signatures=[
                block_pb2.CoSignature(orderer=o, signature=s) for o, s in sorted(votes.items())
            ],
        )
        self.publish(primary, cert)
        if phase == _PREPARE:
            for colluder in self.ids:  # the coalition commits its own blocks at once
                self.count(primary, colluder, _COMMIT, h, r, bh,
                           self.sign_vote(colluder, _COMMIT, h, r, bh))

    def publish(self, oid: str, cert: consensus_pb2.VoteCertificate) -> None:
        """A certificate the coalition formed: show it to all, to some, or to nobody yet."""
        key = _cert_key(cert)
        if key in self.published:
            return
        self.published.add(key)
        kind = "prepared" if cert.phase == _PREPARE else "decided"
        msg = consensus_pb2.ConsensusMessage(**{kind: cert})
        if self.has(Tactic.FORK) and self.fork_publish(oid, cert, msg):
            return
        if (
            self.has(Tactic.STALL)
            and cert.phase == _PREPARE
            and not any(c.height == cert.height for c in self.withheld)
        ):
            self.withheld.append(cert)  # the stall play: nobody sees it until the restarts
            for colluder in self.ids:
                if colluder != oid:
                    self.send(oid, colluder, msg)
            return
        honest = self.honest_ids
        withheld = self.chance(Tactic.WITHHOLD, 0.6)
        if withheld:
            self.withheld.append(cert)
            if self.rng.random() < 0.4:
                honest = self.rng.sample(honest, self.rng.randint(1, len(honest)))
            else:
                honest = []
        if cert.phase == _PREPARE or not withheld:
            # A commit certificate kept from some honest replicas is kept from the other
            # colluders' replicas too: they stay at this height, where a colluder that
            # becomes primary can propose a conflicting block (the fork play).
            for colluder in self.ids:
                if colluder != oid:
                    self.send(oid, colluder, msg)
        for to in self.targets(honest):
            self.send(oid, to, msg, self._delay())
        self.log.append(msg)

    def fork_publish(
        self, oid: str, cert: consensus_pb2.VoteCertificate, msg: consensus_pb2.ConsensusMessage
    ) -> bool:
        """The fork play: every honest replica gets a block's prepare certificate (and locks
        on it); its commit certificate goes to nobody (nor to the other colluders, whose
        replicas stay at that height) until a conflicting block is proposed there: then to
        one honest replica only, which finalises it and moves on, while the coalition votes
        for the conflicting block. Only replicas that ignore their lock can finalise that."""
        h = cert.height
        if cert.phase == _COMMIT and self.forked.setdefault(h, cert.block_hash) == cert.block_hash:
            self.fork_pending[h] = (oid, msg)
        else:
            for to in self.others(oid):
                self.send(oid, to, msg)
        self.log.append(msg)
        return True

    def fork_strike(self, height: int, bh: bytes) -> None:
        """A block other than the forked one is proposed at ``height``: show the forked
        block's commit certificate to one honest replica now."""
        if self.forked.get(height) == bh or height not in self.fork_pending:
            return
        oid, msg = self.fork_pending.pop(height)
        victim = self.rng.choice(self.honest_ids)
        for delay in (0.0, 0.02, 0.1):  # again, in case the network lost it
            self.send(oid, victim, msg, delay)

    # --- what the identities receive -------------------------------------------------------

    def on_input(self, inst: Instance, sender: str, msg: consensus_pb2.ConsensusMessage) -> None:
        oid = inst.orderer
        kind = msg.WhichOneof("body")
        if kind == "vote":
            v = msg.vote
            if self.proposed.get((v.height, v.round, v.block_hash)) == oid and v.phase in (
                _PREPARE, _COMMIT
            ):
                signed = signing_bytes(Phase(v.phase), v.height, v.round, v.block_hash)
                if self.sim.crypto.verify_sig(sender, signed, v.signature):
                    self.count(oid, sender, v.phase, v.height, v.round, v.block_hash,
                               v.signature)
        elif kind in ("prepared", "decided"):
            cert = getattr(msg, kind)
            if len(self.certs_seen) < _LOG:
                self.certs_seen.append(cert)
            self.log.append(msg)
            forking = self.has(Tactic.FORK) and cert.height in self.forked
            if kind == "prepared" and (forking or self.chance(Tactic.DOUBLE_VOTE, 0.9)):
                primary = self.primary_of(oid, cert.height, cert.round)
                if primary is not None and primary != oid:
                    self.send(oid, primary, self.vote_msg(
                        oid, _COMMIT, cert.height, cert.round, cert.block_hash))
        elif kind == "sync_request" and (self.has(Tactic.WITHHOLD) or self.has(Tactic.STALL)):
            # A replica (re)started at that height: it may have lost the block of a
            # certificate held back. Once enough of them did, show the certificate.
            h = msg.sync_request.from_height
            held = [c for c in self.withheld if c.height == h and c.phase == _PREPARE]
            seen = self.restarted.setdefault(h, set())
            if held:  # restarts since the certificate was held back
                seen.add(sender)
            need = (
                len(self.honest_ids)
                if self.has(Tactic.STALL)
                else self.rng.randint(1, len(self.honest_ids))
            )
            if held and len(seen) >= need and h not in self.revealed:
                self.revealed.add(h)
                self.sim.schedule(self.sim.now + self.rng.uniform(0.05, 0.5),
                                  lambda: self.reveal_and_leave(oid, self.rng.choice(held)))
        elif kind == "proposal" and self.has(Tactic.FORK) and p_forked(self, msg.proposal):
            p = msg.proposal
            bh = block_hash(p.block.header)
            self.fork_strike(p.height, bh)
            if sender not in self.ids:
                self.send(oid, sender, self.vote_msg(oid, _PREPARE, p.height, p.round, bh))
        elif kind == "proposal" and self.chance(Tactic.DOUBLE_VOTE, 0.9):
            p = msg.proposal
            if self.holding(p.height):
                return  # holding a certificate back here: help no other block to one
            if len(p.block.header) and sender not in self.ids:
                bh = block_hash(p.block.header)
                self.send(oid, sender, self.vote_msg(oid, _PREPARE, p.height, p.round, bh))

    # --- on its own initiative -----------------------------------------------------------------

    def tick(self) -> None:
        if self.sim.calm_done():
            return  # the honest replicas did what liveness asks: nothing left to attack
        if not self.silent:
            for oid in self.ids:
                if self.chance(Tactic.WITHHOLD, 0.15):
                    self.reveal(oid)
                if self.chance(Tactic.REPLAY, 0.2):
                    self.replay(oid)
                if self.chance(Tactic.FLOOD, 0.1):
                    self.flood(oid)
                if self.chance(Tactic.GARBAGE, 0.2):
                    self.garbage(oid)
        self.sim.schedule(self.sim.now + self.rng.uniform(0.05, 0.3), self.tick)

    def reveal(self, oid: str, cert: consensus_pb2.VoteCertificate | None = None,
               dsts: list[str] | None = None, *, as_round_change: bool | None = None) -> bool:
        """Show a withheld certificate (default: a random one of the identity's height)."""
        shadow = self.shadow(oid)
        if shadow is None:
            return False
        if cert is None:
            here = [c for c in self.withheld if c.height == shadow.height]
            if not here:
                return False
            cert = self.rng.choice(here)
        dsts = self.honest_ids if dsts is None else dsts
        if as_round_change is None:
            as_round_change = cert.phase == _PREPARE and self.rng.random() < 0.7
        if as_round_change and cert.height == shadow.height:
            level = shadow._target if shadow.changing_round else shadow.round
            msg = signed_round_change(shadow, level + self.rng.randint(0, 2), cert)
        else:
            kind = "prepared" if cert.phase == _PREPARE else "decided"
            msg = consensus_pb2.ConsensusMessage(**{kind: cert})
        for to in dsts:
            self.send(oid, to, msg)
        return True

    def reveal_and_leave(self, oid: str, cert: consensus_pb2.VoteCertificate) -> None:
        """The stall play: show the held-back certificate in a round change, then (as the
        seed says) fall silent, so the block's content has to come from honest replicas."""
        mute = self.mute_after_reveal or self.has(Tactic.STALL)
        if self.reveal(oid, cert, as_round_change=True) and mute:
            self.go_silent()

    def replay(self, oid: str) -> None:
        if not self.log:
            return
        msg = self.rng.choice(self.log)
        for to in self.targets(self.honest_ids):
            for _ in range(self.rng.randint(1, 3)):
                self.send(oid, to, msg, self.rng.uniform(0.0, 0.2))

    def flood(self, oid: str) -> None:
        shadow = self.shadow(oid)
        rng = self.rng
        if shadow is not None and rng.random() < 0.15:
            # Fill a replica's buffer for the next height with junk, so the next height's
            # real messages that arrive early find no room.
            victim = rng.choice(self.honest_ids)
            for _ in range(300):
                vote = self.vote_msg(oid, _PREPARE, shadow.height + 1, 0, rng.randbytes(32))
                self.send(oid, victim, vote)
            return
        burst = rng.randint(5, 30)
        for _ in range(burst):
            choice = rng.random()
            if choice < 0.3 and self.flood_txs < _FLOOD_TXS:
                txs = [self.own_tx() for _ in range(rng.randint(1, 10))]
                self.flood_txs += len(txs)
                msg = consensus_pb2.ConsensusMessage(
                    tx_forward=consensus_pb2.TxForward(transactions=txs)
                )
            elif choice < 0.4:
                big = b"ok:big:%d:" % self.counter + bytes(rng.randint(4096, 65536))
                self.counter += 1
                msg = consensus_pb2.ConsensusMessage(
                    tx_forward=consensus_pb2.TxForward(
                        transactions=[b"bad:" + bytes(1000)] * 20 + [big]
                    )
                )
            elif choice < 0.6:
                msg = consensus_pb2.ConsensusMessage(
                    sync_request=consensus_pb2.SyncRequest(from_height=0)
                )
            elif choice < 0.8 and shadow is not None:
                level = shadow._target if shadow.changing_round else shadow.round
                msg = signed_round_change(shadow, level + rng.randint(1, 40), shadow._lock)
            elif self.log:
                msg = rng.choice(self.log)
            else:
                continue
            self.send(oid, rng.choice(self.honest_ids), msg, rng.uniform(0.0, 0.05))

    def garbage(self, oid: str) -> None:
        shadow = self.shadow(oid)
        rng = self.rng
        h = shadow.height if shadow is not None else 0
        r = shadow.round if shadow is not None else 0

        def rand(n: int) -> bytes:
            return rng.randbytes(n)

        def junk_cert() -> consensus_pb2.VoteCertificate:
            cert = consensus_pb2.VoteCertificate(
                height=rng.choice((h, U64_MAX)),
                round=rng.choice((r, U32_MAX, 0)),
                phase=rng.choice((_PREPARE, _COMMIT, 0, 7)),
                block_hash=rand(rng.choice((32, 0, 31, 64))),
            )
            signer = rng.choice(self.sim.ids)
            for name in rng.choice(([signer, signer, signer], ["nobody", signer], self.sim.ids)):
                cert.signatures.add(orderer=name, signature=rand(rng.choice((32, 64, 0))))
            return cert

        options = [
            lambda: consensus_pb2.ConsensusMessage(),
            lambda: consensus_pb2.ConsensusMessage(
                vote=consensus_pb2.Vote(
                    height=rng.choice((h, h + 1, U64_MAX)),
                    round=rng.choice((r, U32_MAX)),
                    phase=rng.choice((_PREPARE, _COMMIT, 0, 9, 2**31 - 1)),
                    block_hash=rand(rng.choice((32, 0, 5))),
                    signature=rand(rng.choice((32, 64))),
                )
            ),
            lambda: consensus_pb2.ConsensusMessage(
                proposal=consensus_pb2.Proposal(
                    height=h,
                    round=rng.choice((r, r + 1, U32_MAX)),
                    block=block_pb2.Block(header=rand(rng.randint(0, 80)),
                                          transactions=[rand(10)]),
                    justify=junk_cert(),
                )
            ),
            lambda: self.extreme_proposal(oid, shadow),
            lambda: consensus_pb2.ConsensusMessage(prepared=junk_cert()),
            lambda: consensus_pb2.ConsensusMessage(decided=junk_cert()),
            lambda: consensus_pb2.ConsensusMessage(
                round_change=consensus_pb2.RoundChange(
                    height=rng.choice((h, U64_MAX)), round=U32_MAX, high_prepare=junk_cert()
                )
            ),
            lambda: consensus_pb2.ConsensusMessage(
                sync_request=consensus_pb2.SyncRequest(from_height=rng.choice((U64_MAX, h + 5)))
            ),
            lambda: consensus_pb2.ConsensusMessage(
                sync_response=consensus_pb2.SyncResponse(blocks=[self.forged_final(oid, shadow)])
            ),
            lambda: consensus_pb2.ConsensusMessage(
                tx_forward=consensus_pb2.TxForward(transactions=[b"", b"\x00" * 7, b"bad:x"])
            ),
        ]
        if _HAS_FETCH:
            options.append(
                lambda: consensus_pb2.ConsensusMessage(
                    block_fetch_request=consensus_pb2.BlockFetchRequest(
                        height=rng.choice((h, U64_MAX)), block_hash=rand(rng.choice((32, 3)))
                    )
                )
            )
            options.append(
                lambda: consensus_pb2.ConsensusMessage(
                    block_fetch_response=consensus_pb2.BlockFetchResponse(
                        height=h,
                        block=rng.choice(
                            (self.forged_final(oid, shadow), block_pb2.Block(header=rand(40)))
                        ),
                    )
                )
            )
        for _ in range(rng.randint(1, 4)):
            msg = rng.choice(options)()
            self.send(oid, rng.choice(self.honest_ids), msg)

    def extreme_proposal(
        self, oid: str, shadow: Replica | None
    ) -> consensus_pb2.ConsensusMessage:
        """A properly signed pre-block with extreme integers: the highest round or height."""
        rng = self.rng
        h = shadow.height if shadow is not None else 0
        number, round_ = rng.choice(((h, U32_MAX), (U64_MAX, 0), (U64_MAX, U32_MAX)))
        previous_hash = shadow.previous_hash if shadow is not None else bytes(32)
        seed = shadow.previous_seed if shadow is not None else self.sim.genesis_seed
        block = craft_block(self.sim, oid, number, round_, previous_hash, seed,
                            [self.own_tx()], self.sim.now)
        return consensus_pb2.ConsensusMessage(
            proposal=consensus_pb2.Proposal(height=number, round=round_, block=block)
        )

    def forged_final(self, oid: str, shadow: Replica | None) -> block_pb2.Block:
        """A block at the victim's height that looks final: real proposer signature, but a
        commit certificate of the coalition's signatures plus made-up ones."""
        if shadow is None:
            return block_pb2.Block(header=b"\x08\x01")
        block = craft_block(
            self.sim, oid, shadow.height, 0, shadow.previous_hash, shadow.previous_seed,
            [self.own_tx()], self.sim.now,
        )
        qc = block.metadata.commit_certificate
        bh = block_hash(block.header)
        for colluder in self.ids:
            qc.signatures.add(orderer=colluder,
                              signature=self.sign_vote(colluder, _COMMIT, shadow.height, 0, bh))
        for other in self.honest_ids:
            qc.signatures.add(orderer=other, signature=hashlib.sha256(bh + other.encode()).digest())
        return block
