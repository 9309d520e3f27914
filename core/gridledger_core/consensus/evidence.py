"""Equivocation: one orderer signing two different statements where the protocol allows one.

What counts, per height and round:
- PROPOSAL: two different pre-blocks signed as primary (the header's round);
- PREPARE / COMMIT: votes for two different blocks in one phase;
- ROUND_CHANGE: two round changes for one round carrying locks of one round on different
  blocks. An honest replica may re-send a round change with a lock of a higher round (its
  lock only moves up while it waits), so only two different locks of one round conflict.

The replica keeps the first signed statement it verified per (kind, orderer, round[, lock
round]) at its height, in a ``Tracker``; a second, different one that also verifies becomes
``EquivocationEvidence``, which anyone can re-check with ``verify`` and the genesis keys.
"""

from __future__ import annotations

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus.certificate import VerifySig
from gridledger_core.consensus.signing import Phase, block_hash, round_change_bytes, signing_bytes

PROPOSAL = consensus_pb2.EQUIVOCATION_KIND_PROPOSAL
PREPARE = consensus_pb2.EQUIVOCATION_KIND_PREPARE
COMMIT = consensus_pb2.EQUIVOCATION_KIND_COMMIT
ROUND_CHANGE = consensus_pb2.EQUIVOCATION_KIND_ROUND_CHANGE

_VOTE_KIND = {consensus_pb2.VOTE_PHASE_PREPARE: PREPARE, consensus_pb2.VOTE_PHASE_COMMIT: COMMIT}
_TRACKED = 4096  # first statements kept per height before the table starts over

# (kind, orderer, round, lock round or 0) -> what was signed there
Key = tuple[int, str, int, int]


def vote_kind(phase: int) -> int:
    return _VOTE_KIND.get(phase, consensus_pb2.EQUIVOCATION_KIND_UNSPECIFIED)


def pre_block_statement(block: block_pb2.Block) -> consensus_pb2.SignedStatement:
    return consensus_pb2.SignedStatement(
        pre_block=consensus_pb2.SignedPreBlock(
            header=block.header, proposer_signature=block.metadata.proposer_signature
        )
    )


def vote_statement(
    height: int, round_: int, phase: int, bh: bytes, signature: bytes
) -> consensus_pb2.SignedStatement:
    return consensus_pb2.SignedStatement(
        vote=consensus_pb2.Vote(
            height=height, round=round_, phase=phase, block_hash=bh, signature=signature
        )
    )


def round_change_statement(rc: consensus_pb2.RoundChange) -> consensus_pb2.SignedStatement:
    """The round change without the lock's co-signatures (its signature covers only the
    lock's round and hash)."""
    slim = consensus_pb2.RoundChange(height=rc.height, round=rc.round, signature=rc.signature)
    if rc.HasField("high_prepare"):
        slim.high_prepare.round = rc.high_prepare.round
        slim.high_prepare.block_hash = rc.high_prepare.block_hash
        slim.high_prepare.height = rc.high_prepare.height
        slim.high_prepare.phase = rc.high_prepare.phase
    return consensus_pb2.SignedStatement(round_change=slim)


def _claim(
    statement: consensus_pb2.SignedStatement, orderer: str, verify_sig: VerifySig
) -> tuple[Key, bytes, int] | None:
    """(key, content, height) of a statement whose signature verifies, else None."""
    kind = statement.WhichOneof("body")
    if kind == "pre_block":
        header = block_pb2.BlockHeader()
        try:
            header.ParseFromString(statement.pre_block.header)
        except Exception:  # DecodeError: not a statement anyone signed
            return None
        bh = block_hash(statement.pre_block.header)
        signed = signing_bytes(Phase.PROPOSAL, header.number, header.round, bh)
        if header.proposer != orderer or not verify_sig(
            orderer, signed, statement.pre_block.proposer_signature
        ):
            return None
        return (PROPOSAL, orderer, header.round, 0), bh, header.number
    if kind == "vote":
        v = statement.vote
        vk = vote_kind(v.phase)
        if vk == consensus_pb2.EQUIVOCATION_KIND_UNSPECIFIED or len(v.block_hash) != 32:
            return None
        signed = signing_bytes(Phase(v.phase), v.height, v.round, v.block_hash)
        if not verify_sig(orderer, signed, v.signature):
            return None
        return (vk, orderer, v.round, 0), v.block_hash, v.height
    if kind == "round_change":
        rc = statement.round_change
        if not rc.HasField("high_prepare") or len(rc.high_prepare.block_hash) != 32:
            return None
        lock = (rc.high_prepare.round, rc.high_prepare.block_hash)
        if not verify_sig(orderer, round_change_bytes(rc.height, rc.round, lock), rc.signature):
            return None
        return (ROUND_CHANGE, orderer, rc.round, lock[0]), lock[1], rc.height
    return None


def verify(evidence: consensus_pb2.EquivocationEvidence, verify_sig: VerifySig) -> bool:
    """True when both statements are signed by ``evidence.orderer``, are of the named kind,
    height and round, and conflict."""
    first = _claim(evidence.first, evidence.orderer, verify_sig)
    second = _claim(evidence.second, evidence.orderer, verify_sig)
    if first is None or second is None:
        return False
    (key1, content1, height1), (key2, content2, height2) = first, second
    return (
        key1 == key2
        and key1[0] == evidence.kind
        and key1[2] == evidence.round
        and height1 == height2 == evidence.height
        and content1 != content2
    )


class Tracker:
    """First signed statement per key at one height; conflicts become evidence, once."""

    def __init__(self, reporter: str) -> None:
        self.reporter = reporter
        self._first: dict[Key, tuple[bytes, consensus_pb2.SignedStatement]] = {}
        self._reported: set[Key] = set()
        self.count = 0  # equivocations detected by this replica (all heights)

    def reset(self) -> None:
        """A new height: statements of the last one can no longer conflict with new ones."""
        self._first.clear()
        self._reported.clear()

    def conflicts(self, key: Key, content: bytes) -> bool:
        """True when a different statement is recorded under ``key`` and not yet reported:
        only then is a second signature worth verifying."""
        first = self._first.get(key)
        return first is not None and first[0] != content and key not in self._reported

    def observe(
        self,
        key: Key,
        content: bytes,
        statement: consensus_pb2.SignedStatement,
        height: int,
        now: float,
    ) -> consensus_pb2.EquivocationEvidence | None:
        """Record a statement whose signature the caller verified; evidence on a conflict."""
        first = self._first.get(key)
        if first is None:
            if len(self._first) >= _TRACKED:  # a long height: forget rather than grow
                self._first.clear()
            self._first[key] = (content, statement)
            return None
        if first[0] == content or key in self._reported:
            return None
        self._reported.add(key)
        self.count += 1
        kind, orderer, round_, _ = key
        return consensus_pb2.EquivocationEvidence(
            orderer=orderer,
            height=height,
            round=round_,
            kind=kind,
            first=first[1],
            second=statement,
            reported_by=self.reporter,
            detected_unix_ms=int(now * 1000),
        )
