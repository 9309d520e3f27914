"""Offline re-verification of a whole ledger: every block's ordering proof and hash chain,
and re-execution of every transaction to the same validation codes and state roots."""

from __future__ import annotations

from dataclasses import dataclass

from gridledger.common.v1 import block_pb2, ledger_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.ledger import BlockRejected, Ledger
from gridledger_core.storage import KeyValueStore, MemoryStore


@dataclass(frozen=True)
class AuditReport:
    blocks_checked: int
    transactions: int
    state_root: bytes
    problem_height: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.problem_height is None


def verify_ledger(store: KeyValueStore, genesis: Genesis) -> AuditReport:
    """Replay the stored blocks into a fresh ledger under the same rules and compare."""
    replay = Ledger(MemoryStore(), genesis, block_verifier(genesis))
    raw_chain = store.get(schema.CHAIN_STATE)
    stored_chain = ledger_pb2.ChainState.FromString(raw_chain) if raw_chain else None
    height = stored_chain.height if stored_chain else 0

    def problem(number: int, reason: str) -> AuditReport:
        return AuditReport(number, replay.chain.transactions, replay.chain.state_root,
                           number, reason)

    for number in range(height):
        raw = store.get(schema.block_key(number))
        raw_record = store.get(schema.commit_record_key(number))
        if raw is None or raw_record is None:
            return problem(number, "block or its commit record is missing")
        try:
            block = block_pb2.Block.FromString(raw)
            record = ledger_pb2.BlockCommitRecord.FromString(raw_record)
        except Exception as exc:  # any decoding failure is corruption, reported as such
            return problem(number, f"stored bytes do not decode: {exc}")
        try:
            result = replay.commit(block)
        except BlockRejected as exc:
            return problem(number, str(exc))
        if result.block_hash != record.block_hash:
            return problem(number, "stored block hash differs from the block's header hash")
        if list(result.codes) != list(record.validation_codes):
            return problem(number, "re-execution gives different validation codes")
        if result.state_root != record.state_root:
            return problem(number, "re-execution gives a different state root")
    if stored_chain is not None and replay.chain != stored_chain:
        return problem(height, "stored chain state differs from the replayed one")
    for key, value in store.scan(schema.STATE):
        if replay.store.get(key) != value:
            return problem(height, f"stored state {key[len(schema.STATE):].decode()!r} "
                                   "differs from the replayed state")
    return AuditReport(height, replay.chain.transactions, replay.chain.state_root)
