"""Endorsing concurrently submitted transactions with one signature per batch.

Natural batching, no timer: the first caller that finds nobody signing becomes the leader and
signs what is queued at once (a lone request is a batch of one). Callers that arrive while a
batch is being signed queue up; when the leader is done it hands the leader role to the oldest
waiting caller, who signs everything that queued meanwhile (up to `max_batch`) as the next
batch. No extra thread, and each caller leads at most the one batch that holds its own payload.

Every batch signature made here is entered into the process's verified-signature cache, so
the endorser's ledger replica does not verify its own endorsements again.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from prometheus_client import Histogram

from gridledger.common.v1 import envelope_pb2
from gridledger_core.sigcache import VERIFIED
from gridledger_core.signing_identity import SigningIdentity

DEFAULT_MAX_BATCH = 256

BATCH_SIZE = Histogram("gridledger_endorser_endorsement_batch_size",
                       "Transactions endorsed under one batch signature.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


class _Slot:
    __slots__ = ("done", "endorsement", "error", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.endorsement: envelope_pb2.Endorsement | None = None
        self.error: BaseException | None = None
        # Set when the slot is signed, or when its caller is handed the leader role.
        self.done = threading.Event()


class BatchSigner:
    def __init__(self, identity: SigningIdentity, max_batch: int = DEFAULT_MAX_BATCH,
                 remember: Callable[[bytes, bytes, bytes], None] = VERIFIED.remember) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._identity = identity
        self._max_batch = max_batch
        self._remember = remember
        self._lock = threading.Lock()
        self._queue: deque[_Slot] = deque()
        self._busy = False  # a leader is signing (or has been handed the role)

    def endorse(self, payload: bytes) -> envelope_pb2.Endorsement:
        """This payload's endorsement (with its batch proof); blocks until it is signed."""
        slot = _Slot(payload)
        with self._lock:
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.wait()
        while slot.endorsement is None and slot.error is None:
            # We lead: our slot is the oldest queued one, so it is in this batch.
            with self._lock:
                batch = [self._queue.popleft()
                         for _ in range(min(self._max_batch, len(self._queue)))]
            self._sign(batch)
        with self._lock:
            if self._queue:
                self._queue[0].done.set()  # the oldest waiter leads the next batch
            else:
                self._busy = False
        if slot.error is not None:
            raise slot.error
        assert slot.endorsement is not None
        return slot.endorsement

    def endorse_many(self, payloads: list[bytes]) -> list[envelope_pb2.Endorsement]:
        """Endorsements for a caller's own batch (SubmitBatch): signed at once, one signature
        per `max_batch` payloads, without joining the concurrent callers' queue (the batch
        already amortises the signature)."""
        endorsements: list[envelope_pb2.Endorsement] = []
        for first in range(0, len(payloads), self._max_batch):
            chunk = payloads[first:first + self._max_batch]
            message, signed = self._identity.endorse_batch(chunk)
            self._remember(self._identity.signer.public_key_bytes, signed[0].signature,
                           message)
            BATCH_SIZE.observe(len(chunk))
            endorsements += signed
        return endorsements

    def _sign(self, batch: list[_Slot]) -> None:
        try:
            message, endorsements = self._identity.endorse_batch([s.payload for s in batch])
            self._remember(self._identity.signer.public_key_bytes,
                           endorsements[0].signature, message)
        except BaseException as exc:  # every waiter must wake, whatever happened
            for slot in batch:
                slot.error = exc
                slot.done.set()
            return
        BATCH_SIZE.observe(len(batch))
        for slot, endorsement in zip(batch, endorsements, strict=True):
            slot.endorsement = endorsement
            slot.done.set()
