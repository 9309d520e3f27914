"""Offline re-verification of a whole ledger: every block's ordering proof and hash chain,
and re-execution of every transaction to the same validation codes and state roots."""

from __future__ import annotations

import time
from collections.abc import Callable
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


BlockObserver = Callable[[int, block_pb2.Block, float], None]


def verify_ledger(store: KeyValueStore, genesis: Genesis, *, into: KeyValueStore | None = None,
                  observe: BlockObserver | None = None) -> AuditReport:
    """Replay the stored blocks into a fresh ledger under the same rules and compare.

    `into` is the empty store the replay commits to (default: in memory). `observe(number,
    block, cpu_seconds)` is told the process CPU each block's commit took (the benchmark's
    commit replay). A problem reads after "block <problem_height> "."""
    replay = Ledger(into if into is not None else MemoryStore(), genesis,
                    block_verifier(genesis))
    raw_chain = store.get(schema.CHAIN_STATE)
    stored_chain = ledger_pb2.ChainState.FromString(raw_chain) if raw_chain else None
    height = stored_chain.height if stored_chain else 0

    def problem(number: int, reason: str) -> AuditReport:
        return AuditReport(number, replay.chain.transactions, replay.chain.state_root,
                           number, reason)

    for number in range(height):
        raw = store.get(schema.block_key(number))
        raw_record = store.get(schema.commit_record_key(number))
        if raw is None:
            return problem(number, "is missing")
        if raw_record is None:
            return problem(number, "has no commit record")
        try:
            block = block_pb2.Block.FromString(raw)
            record = ledger_pb2.BlockCommitRecord.FromString(raw_record)
        except Exception as exc:  # any decoding failure is corruption, reported as such
            return problem(number, f"is stored in bytes that do not decode: {exc}")
        started = time.process_time()
        try:
            result = replay.commit(block)
        except BlockRejected as exc:
            return problem(number, f"is rejected: {exc}")
        if observe is not None:
            observe(number, block, time.process_time() - started)
        if result.block_hash != record.block_hash:
            return problem(number, "has a stored hash that differs from its header's hash")
        if list(result.codes) != list(record.validation_codes):
            return problem(number, "re-executes to different validation codes")
        if result.state_root != record.state_root:
            return problem(number, "re-executes to a different state root")
    if stored_chain is not None and replay.chain != stored_chain:
        return problem(height, "(after the last) finds a stored chain state that differs "
                               "from the replayed one")
    for key, value in store.scan(schema.STATE):
        if replay.store.get(key) != value:
            return problem(height, f"(after the last) finds stored state "
                                   f"{key[len(schema.STATE):].decode()!r} that differs from "
                                   "the replayed state")
    return AuditReport(height, replay.chain.transactions, replay.chain.state_root)
