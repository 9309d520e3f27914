"""The orderer's durable state in LMDB: final blocks with their seeds, the tx-id index, the
consensus replica's persisted votes and locks, and the pool of acknowledged transactions.

`apply` writes every Persist and Deliver of one action list in a single synced transaction,
which is what the replica requires before any message that follows them leaves the process
(so a restarted orderer can never sign something that conflicts with what it signed).

The pool (`POOL` + tx id -> transaction bytes) holds every transaction this orderer
acknowledged that is not final yet: `apply` writes new entries with the same transaction
that stores whatever the action list delivers, and deletes the entries of the transactions
of every block it stores, so an entry never outlives the block that made it final.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gridledger.common.v1 import block_pb2, envelope_pb2, transaction_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus.actions import Deliver, Persist
from gridledger_core.storage import LmdbStore, WriteBatch

BLOCK = b"ob1/"
SEED = b"os1/"
TX = b"ot1/"
CONSENSUS = b"oc1/"
POOL = b"op1/"
HEIGHT = b"om1/height"
WRITE_PROBE = b"om1/write-probe"  # rewritten only to learn whether writes work again
EVIDENCE = b"oe1/"  # + 8-byte sequence number: equivocation evidence, the newest kept
EVIDENCE_KEPT = 1_000


def _number(n: int) -> bytes:
    return n.to_bytes(8, "big")


def tx_id_of(raw: bytes) -> str:
    """The tx id inside an endorsed transaction's bytes ("" when it does not decode)."""
    try:
        endorsed = envelope_pb2.EndorsedTransaction.FromString(raw)
        return transaction_pb2.Transaction.FromString(endorsed.envelope.payload).header.tx_id
    except Exception:  # malformed bytes never reach a block; callers treat "" as invalid
        return ""


class OrdererStore:
    def __init__(self, store: LmdbStore) -> None:
        self._store = store
        raw = store.get(HEIGHT)
        self.height = int.from_bytes(raw, "big") if raw else 0

    def apply(self, actions: Sequence[Persist | Deliver],
              tx_id: Callable[[bytes], bytes] | None = None,
              pool: Sequence[tuple[bytes, bytes]] = ()) -> list[block_pb2.Block]:
        """Make these actions and the new pool entries `pool` ((tx id, bytes) pairs) durable
        at once; returns the delivered blocks. `tx_id` maps a transaction's bytes to its id
        (the orderer passes its cache; default: parse)."""
        tx_id = tx_id or (lambda raw: tx_id_of(raw).encode())
        batch = WriteBatch()
        for pooled_id, raw in pool:
            batch.put(POOL + pooled_id, raw)
        delivered: list[block_pb2.Block] = []
        height = self.height
        for action in actions:
            if isinstance(action, Persist):
                batch.put(CONSENSUS + action.key.encode(), action.value)
                continue
            header = block_pb2.BlockHeader.FromString(action.block.header)
            if header.number != height:
                raise RuntimeError(f"replica delivered block {header.number} at height {height}")
            batch.put(BLOCK + _number(header.number), action.block.SerializeToString())
            batch.put(SEED + _number(header.number), action.seed)
            for tx in action.block.transactions:
                final_id = tx_id(tx)
                batch.put(TX + final_id, _number(header.number))
                batch.delete(POOL + final_id)  # later than the puts above: it wins
            height += 1
            batch.put(HEIGHT, _number(height))
            delivered.append(action.block)
        if len(batch):
            self._store.commit(batch)
        self.height = height
        return delivered

    def probe_write(self) -> None:
        """One small synced write, raising as any write would: whether storage works, when
        nothing else is being written (an idle orderer after a failed write)."""
        batch = WriteBatch()
        batch.put(WRITE_PROBE, b"\x01")
        self._store.commit(batch)

    def block(self, number: int) -> block_pb2.Block | None:
        raw = self._store.get(BLOCK + _number(number))
        return block_pb2.Block.FromString(raw) if raw is not None else None

    def seed(self, number: int) -> bytes | None:
        return self._store.get(SEED + _number(number))

    def is_final(self, tx_id: bytes) -> bool:
        """Whether a stored final block holds this tx id (the replica refuses to order one
        twice; a key read, so no orderer holds every id ever ordered in memory)."""
        return self._store.get(TX + tx_id) is not None

    def persisted(self) -> dict[str, bytes]:
        offset = len(CONSENSUS)
        return {k[offset:].decode(): v for k, v in self._store.scan(CONSENSUS)}

    def pooled(self) -> list[tuple[bytes, bytes]]:
        """The acknowledged transactions not yet final: (tx id, bytes), by tx id."""
        offset = len(POOL)
        return [(k[offset:], v) for k, v in self._store.scan(POOL)]

    def unpool(self, tx_ids: Sequence[bytes]) -> None:
        """Forget pool entries that will never be ordered (final already, or refused)."""
        if not tx_ids:
            return
        batch = WriteBatch()
        for pooled_id in tx_ids:
            batch.delete(POOL + pooled_id)
        self._store.commit(batch)

    def add_evidence(self, evidence: consensus_pb2.EquivocationEvidence) -> None:
        """Keep equivocation evidence durably; the oldest goes beyond EVIDENCE_KEPT."""
        last = next(iter(self._store.scan(EVIDENCE, limit=1, reverse=True)), None)
        seq = int.from_bytes(last[0][len(EVIDENCE):], "big") + 1 if last else 0
        batch = WriteBatch()
        batch.put(EVIDENCE + _number(seq), evidence.SerializeToString())
        if seq >= EVIDENCE_KEPT:
            batch.delete(EVIDENCE + _number(seq - EVIDENCE_KEPT))
        self._store.commit(batch)

    def evidence(self, limit: int) -> list[consensus_pb2.EquivocationEvidence]:
        """The newest `limit` pieces of evidence, newest first."""
        return [consensus_pb2.EquivocationEvidence.FromString(value)
                for _, value in self._store.scan(EVIDENCE, limit=limit, reverse=True)]

    def close(self) -> None:
        self._store.close()
