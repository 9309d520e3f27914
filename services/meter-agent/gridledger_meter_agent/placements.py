"""The pre-sale trader's journal of signed trade requests and PlaceOrders: an LMDB
environment of its own in the agent's data directory (``presale/``).

A PlaceOrder is written (synced) before it is first submitted and kept until its slot's
market closes. An agent restarted while one was in flight, acknowledged or not, finds it
here: it sends the same envelope again (the ledger deduplicates by tx id) and lets the chain
decide before it asks for a new option, instead of trusting a committer that has not seen
the order yet. So a slot gets no second order across restarts either.

A trade request is written the same way before it is first sent, until its option's
PlaceOrder replaces it (in the same write) or the slot's market closes: an agent restarted
before the endorser's answer reached it sends the very same request again while it is fresh,
and the endorser answers it with the option it kept (no second hold; the first option does
not lapse, charged to the member).

One record of each kind per slot (the latest): key ``p/`` (PlaceOrder) or ``r/`` (request)
+ slot (8 bytes, big-endian, so records scan in slot order); a PlaceOrder's value = option
expiry (8 bytes) + side (1 byte: 1 sell, 0 buy) + the signed envelope's bytes; a request's =
when it was made (8 bytes) + the signed envelope's bytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger_core.signing_identity import envelope_tx_id
from gridledger_core.storage import LmdbStore, WriteBatch

log = logging.getLogger(__name__)

PREFIX = b"p/"
REQUEST_PREFIX = b"r/"
PREFIXES = (PREFIX, REQUEST_PREFIX)
MAP_SIZE = 64 * 1024 * 1024  # a record per open slot: a few KiB each


@dataclass(frozen=True)
class Placement:
    slot: int
    placing: envelope_pb2.SignedEnvelope
    option_expires_at: int
    side_name: str  # "sell" or "buy"


@dataclass(frozen=True)
class PendingRequest:
    slot: int
    request: envelope_pb2.SignedEnvelope
    requested_at: int


def _key(slot: int, prefix: bytes = PREFIX) -> bytes:
    return prefix + slot.to_bytes(8, "big", signed=True)


def _slot(key: bytes) -> int:
    """The slot of a record's key, whichever its prefix (`_key`)."""
    return int.from_bytes(key[-8:], "big", signed=True)


def _trade_request(envelope: envelope_pb2.SignedEnvelope) -> market_pb2.TradeRequest:
    return market_pb2.TradeRequest.FromString(envelope.payload)


class JournalClosed(RuntimeError):
    """The agent is stopping: nothing more is recorded (so nothing more is sent)."""


class PlacementJournal:
    def __init__(self, path: Path) -> None:
        self._store = LmdbStore(path, map_size=MAP_SIZE)
        # The presale thread may outlive its join timeout at shutdown: no write after close.
        self._lock = threading.Lock()
        self._closed = False

    def record(self, placement: Placement) -> None:
        """Durably, before the PlaceOrder leaves: it replaces the slot's earlier one, and
        the request its option answers."""
        value = (placement.option_expires_at.to_bytes(8, "big", signed=True)
                 + (b"\x01" if placement.side_name == "sell" else b"\x00")
                 + placement.placing.SerializeToString())
        batch = WriteBatch()
        batch.put(_key(placement.slot), value)
        batch.delete(_key(placement.slot, REQUEST_PREFIX))
        self._commit(batch)

    def record_request(self, pending: PendingRequest) -> None:
        """Durably, before the trade request leaves: it replaces the slot's earlier one."""
        batch = WriteBatch()
        batch.put(_key(pending.slot, REQUEST_PREFIX),
                  pending.requested_at.to_bytes(8, "big", signed=True)
                  + pending.request.SerializeToString())
        self._commit(batch)

    def _commit(self, batch: WriteBatch, unless_absent: bytes | None = None) -> None:
        """Write `batch` (nothing when the key `unless_absent` is not there)."""
        with self._lock:
            if self._closed:
                raise JournalClosed("the pre-sale journal is closed (the agent is stopping)")
            if unless_absent is None or self._store.get(unless_absent) is not None:
                self._store.commit(batch)

    def forget_request(self, slot: int) -> None:
        """The slot's request is settled (answered, or refused for good): not to be sent
        again by a restarted agent."""
        key = _key(slot, REQUEST_PREFIX)
        batch = WriteBatch()
        batch.delete(key)
        self._commit(batch, unless_absent=key)

    def open_placements(self, after: int) -> list[Placement]:
        """The recorded PlaceOrders of slots after `after` (still open), oldest slot first.
        A record that does not decode (a damaged disk) is logged and dropped: the slot is
        then ordered as if nothing was recorded."""
        return [Placement(slot, placing, int.from_bytes(value[:8], "big", signed=True),
                          "sell" if value[8:9] == b"\x01" else "buy")
                for slot, value, placing in self._open(PREFIX, after, 9, envelope_tx_id)]

    def open_requests(self, after: int) -> list[PendingRequest]:
        """The recorded trade requests of slots after `after` whose option was not
        accepted, oldest slot first (damaged records dropped, as open_placements)."""
        return [PendingRequest(slot, request, int.from_bytes(value[:8], "big", signed=True))
                for slot, value, request in self._open(REQUEST_PREFIX, after, 8,
                                                       _trade_request)]

    def _open(self, prefix: bytes, after: int, header: int,
              check: Callable[[envelope_pb2.SignedEnvelope], object]
              ) -> list[tuple[int, bytes, envelope_pb2.SignedEnvelope]]:
        """(slot, value, the envelope after `header` bytes) of `prefix`'s records of slots
        after `after`; records that do not decode, or whose envelope `check` refuses
        (DecodeError, ValueError), are logged and deleted."""
        found, damaged = [], WriteBatch()
        for key, value in self._store.scan(prefix, start=_key(after + 1, prefix)):
            try:
                envelope = envelope_pb2.SignedEnvelope.FromString(value[header:])
                if len(key) != len(prefix) + 8 or len(value) <= header or not envelope.payload:
                    raise ValueError(f"{len(value)} bytes")
                check(envelope)
            except (DecodeError, ValueError) as exc:
                log.error("pre-sale journal record %s is damaged (%s): dropped", key.hex(), exc)
                damaged.delete(key)
                continue
            found.append((_slot(key), value, envelope))
        if damaged:
            self._commit(damaged)
        return found

    def forget_up_to(self, slot: int) -> None:
        """Drop the records of slots up to `slot` (their markets closed)."""
        batch = WriteBatch()
        for prefix in PREFIXES:
            for key, _ in self._store.scan(prefix, start=None):
                if _slot(key) > slot:
                    break
                batch.delete(key)
        if batch:
            self._commit(batch)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._store.close()
