"""The pre-sale trader's journal of signed PlaceOrders: an LMDB environment of its own in the
agent's data directory (``presale/``).

A PlaceOrder is written (synced) before it is first submitted and kept until its slot's
market closes. An agent restarted while one was in flight, acknowledged or not, finds it
here: it sends the same envelope again (the ledger deduplicates by tx id) and lets the chain
decide before it asks for a new option, instead of trusting a committer that has not seen
the order yet. So a slot gets no second order across restarts either.

One record per slot (the latest PlaceOrder for it): key ``p/`` + slot (8 bytes, big-endian,
so records scan in slot order), value = option expiry (8 bytes) + side (1 byte: 1 sell,
0 buy) + the signed envelope's bytes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from gridledger.common.v1 import envelope_pb2
from gridledger_core.signing_identity import envelope_tx_id
from gridledger_core.storage import LmdbStore, WriteBatch

log = logging.getLogger(__name__)

PREFIX = b"p/"
MAP_SIZE = 64 * 1024 * 1024  # a record per open slot: a few KiB each


@dataclass(frozen=True)
class Placement:
    slot: int
    placing: envelope_pb2.SignedEnvelope
    option_expires_at: int
    side_name: str  # "sell" or "buy"


def _key(slot: int) -> bytes:
    return PREFIX + slot.to_bytes(8, "big", signed=True)


class JournalClosed(RuntimeError):
    """The agent is stopping: nothing more is recorded (so nothing more is sent)."""


class PlacementJournal:
    def __init__(self, path: Path) -> None:
        self._store = LmdbStore(path, map_size=MAP_SIZE)
        # The presale thread may outlive its join timeout at shutdown: no write after close.
        self._lock = threading.Lock()
        self._closed = False

    def record(self, placement: Placement) -> None:
        """Durably, before the PlaceOrder leaves: it replaces the slot's earlier one."""
        value = (placement.option_expires_at.to_bytes(8, "big", signed=True)
                 + (b"\x01" if placement.side_name == "sell" else b"\x00")
                 + placement.placing.SerializeToString())
        batch = WriteBatch()
        batch.put(_key(placement.slot), value)
        self._commit(batch)

    def _commit(self, batch: WriteBatch) -> None:
        with self._lock:
            if self._closed:
                raise JournalClosed("the pre-sale journal is closed (the agent is stopping)")
            self._store.commit(batch)

    def open_placements(self, after: int) -> list[Placement]:
        """The recorded PlaceOrders of slots after `after` (still open), oldest slot first.
        A record that does not decode (a damaged disk) is logged and dropped: the slot is
        then ordered as if nothing was recorded."""
        found, damaged = [], WriteBatch()
        for key, value in self._store.scan(PREFIX, start=_key(after + 1)):
            try:
                placing = envelope_pb2.SignedEnvelope.FromString(value[9:])
                if len(key) != len(PREFIX) + 8 or len(value) <= 9 or not placing.payload:
                    raise ValueError(f"{len(value)} bytes")
                envelope_tx_id(placing)
            except (DecodeError, ValueError) as exc:
                log.error("pre-sale journal record %s is damaged (%s): dropped", key.hex(), exc)
                damaged.delete(key)
                continue
            found.append(Placement(int.from_bytes(key[len(PREFIX):], "big", signed=True),
                                   placing, int.from_bytes(value[:8], "big", signed=True),
                                   "sell" if value[8:9] == b"\x01" else "buy"))
        if damaged:
            self._commit(damaged)
        return found

    def forget_up_to(self, slot: int) -> None:
        """Drop the records of slots up to `slot` (their markets closed)."""
        batch = WriteBatch()
        for key, _ in self._store.scan(PREFIX, start=None):
            if int.from_bytes(key[len(PREFIX):], "big", signed=True) > slot:
                break
            batch.delete(key)
        if batch:
            self._commit(batch)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._store.close()
