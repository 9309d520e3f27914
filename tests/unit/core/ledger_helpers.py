"""Builders for ledger tests: signed readings, endorsed transactions, chained blocks."""

from __future__ import annotations

import time
from pathlib import Path

from gridledger.common.v1 import block_pb2, envelope_pb2, transaction_pb2
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, block_hash, data_hash
from gridledger_core.signing_identity import SigningIdentity

INTERVAL = 900


def reading(meter: str, start: int, produced: int = 500, consumed: int = 300,
            seconds: int = INTERVAL) -> transaction_pb2.MeterReading:
    return transaction_pb2.MeterReading(meter=meter, interval_start=start, interval_seconds=seconds,
                                        produced_wh=produced, consumed_wh=consumed)


def past_interval(n: int = 1) -> int:
    return (int(time.time()) // INTERVAL - n) * INTERVAL


def endorsed(envelope: envelope_pb2.SignedEnvelope, endorser: SigningIdentity | None) -> bytes:
    tx = envelope_pb2.EndorsedTransaction(envelope=envelope)
    if endorser is not None:
        tx.endorsements.append(endorser.endorse(envelope))
    return tx.SerializeToString()


class ChainBuilder:
    """Cuts blocks that chain onto each other (consensus proof left empty: these tests inject a
    verifier that accepts it; certificates are tested with the consensus core)."""

    def __init__(self) -> None:
        self.previous = GENESIS_PREVIOUS_HASH
        self.number = 0

    def block(self, transactions: list[bytes], timestamp: float | None = None) -> block_pb2.Block:
        header = block_pb2.BlockHeader(number=self.number, previous_hash=self.previous,
                                       data_hash=data_hash(transactions), proposer="orderer-1")
        header.timestamp.FromNanoseconds(int((timestamp or time.time()) * 1e9))
        raw = header.SerializeToString()
        self.previous = block_hash(raw)
        self.number += 1
        return block_pb2.Block(header=raw, transactions=transactions)


def identity(consortium_dir: Path, name: str) -> SigningIdentity:
    return SigningIdentity.load(consortium_dir, name)
