"""A ledger holding money and settlement records, for the committer's queries and gridctl's
money commands: written with the money primitives (rules/money.py) and stored records, as the
settlement rules would leave them; and a real committer NodeServer over it (mTLS, authz).

State: meter-1 funded 5.000000, paid 1.000000 to meter-2, reserved 0.500000 (3 entries);
meter-3 untouched with a genesis allocation of 7.000000; SLOT settled with statements of
meter-1 (sold 1,500 Wh, 200 Wh short) and meter-2 (bought 1,500 Wh), which also have
statements of the slot before (not settled itself: only statements were written)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import block_pb2, settlement_pb2
from gridledger_committer.service import CommitterServicer
from gridledger_core.genesis import Genesis, SettlementParams
from gridledger_core.ledger import schema
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.rpc.peer_identity import ledger_lookup
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.storage import MemoryStore
from gridledger_core.storage.base import WriteBatch

NOW = 1_800_000_000
SLOT = 1_799_992_800  # a multiple of 3600


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Ordering proofs are the consensus core's tests."""


def apply(ledger: Ledger, state: StateOverlay) -> None:
    """Write an overlay's changes straight into the ledger's committed state."""
    batch = WriteBatch()
    for key, value in state.changes():
        if value is not None:
            batch.put(schema.state_key(key), value)
    ledger.store.commit(batch)


def statement(meter: str, slot: int, sold: int = 0, bought: int = 0,
              shortfall: int = 0) -> settlement_pb2.MeterStatement:
    return settlement_pb2.MeterStatement(meter=meter, slot_start=slot, sold_wh=sold,
                                         bought_wh=bought, shortfall_wh=shortfall)


def money_ledger(genesis: Genesis) -> Ledger:
    settled = dataclasses.replace(genesis, settlement=SettlementParams(
        currency="EUR", allocations={"meter-3": 7_000_000, "balancing": 1}))
    ledger = Ledger(MemoryStore(), settled, accept_proof)
    state = StateOverlay(ledger.store)
    ctx = TxContext(None, settled, NOW, 5, None)  # type: ignore[arg-type]
    money.fund(state, ctx, "meter-1", 5_000_000, "tx-fund")
    money.transfer(state, ctx, "meter-1", "meter-2", 1_000_000,
                   settlement_pb2.ENTRY_KIND_TRANSFER, "tx-transfer")
    money.reserve(state, ctx, "meter-1", 500_000, "order-1")
    record = settlement_pb2.SlotSettlement(slot_start=SLOT, settled_by="settlement",
                                           meters=2, traded_wh=1500, shortfall_wh=200)
    state.put(schema.settlement_key(SLOT), record.SerializeToString())
    for slot in (SLOT - 3600, SLOT):
        for s in (statement("meter-1", slot, sold=1500, shortfall=200),
                  statement("meter-2", slot, bought=1500)):
            state.put(schema.statement_key(slot, s.meter), s.SerializeToString())
            state.put(schema.statement_meter_key(s.meter, slot), b"")
    apply(ledger, state)
    return ledger


def serve_committer(ledger: Ledger, consortium_dir: Path) -> NodeServer:
    """A started committer NodeServer (as committer-1) answering from `ledger`."""
    server = NodeServer("committer-1", "committer", "127.0.0.1:0", "127.0.0.1:0",
                        TlsFiles.for_node(consortium_dir, "committer-1"),
                        genesis=ledger.genesis, account_lookup=ledger_lookup(ledger.get_state))
    server.add_service(committer_pb2_grpc.add_CommitterServiceServicer_to_server,
                       CommitterServicer(ledger, HeightNotifier(lambda: ledger.height)),
                       committer_pb2.DESCRIPTOR.services_by_name["CommitterService"].full_name)
    server.start()
    return server
