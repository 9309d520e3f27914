"""Turning the device's counters into signed readings, one per ledger interval.

The agent keeps a cursor (the next interval to read) in its outbox environment; a reading is
appended to the outbox and the cursor advanced in one LMDB transaction, so a crash never
skips or repeats an interval. Sending is the outbox sender's job. A full outbox stops the
reader (the cursor waits) instead of dropping anything.

Intervals that ended more than `history_before_s` ago (backfill of a new meter; the ledger's
readings submission window less a sending margin, `history_threshold`) go out as onboarding
history: HistoryReadings
transactions of up to `history_chunk` intervals, which the ledger admits only before the
meter's first order. So a new meter posts its history first and trades after
(`wait_for_history`); a reading that is late because the agent was down for longer than the
window is refused by the ledger (dead letter), as it must be.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from prometheus_client import Counter

from gridledger.common.v1 import settlement_pb2, transaction_pb2
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.drivers.base import CounterReading, MeterDriver
from gridledger_meter_agent.outbox import Outbox

log = logging.getLogger(__name__)

DEVICE_ERRORS = Counter("gridledger_meter_device_errors", "Failed reads of the metering device.",
                        ["state"])
READINGS_CREATED = Counter("gridledger_meter_readings_created",
                           "Signed readings put into the outbox.")
OUTBOX_FULL = Counter("gridledger_meter_outbox_full",
                      "Polls that left due intervals unread because the outbox was full.")

COUNTERS_KEY = b"last-boundary-counters"


def _encode(reading: CounterReading) -> bytes:
    return f"{reading.read_at},{reading.exported_wh},{reading.imported_wh}".encode()


def _decode(raw: bytes) -> CounterReading:
    at, exported, imported = (int(x) for x in raw.decode().split(","))
    return CounterReading(exported_wh=exported, imported_wh=imported, read_at=at)


@dataclass
class IntervalReader:
    """Reads the counters at every interval boundary; the difference between consecutive
    boundaries is the interval's reading. The last boundary's counters are stored with each
    transaction (same LMDB transaction), so a restart continues exactly where it stopped. A
    live device read late attributes the energy up to the read to the interval that just
    ended."""

    driver: MeterDriver
    identity: SigningIdentity
    outbox: Outbox
    interval_seconds: int
    last_interval_start: int = -1
    # Intervals ending more than this long before `now` go as onboarding history (0: never).
    history_before_s: int = 0
    history_chunk: int = 96
    # Set once a poll found no interval old enough to be history: backfill is done.
    caught_up: threading.Event = field(default_factory=threading.Event)

    def poll(self, now: int, backfill_seconds: int, max_intervals: int) -> int:
        """Create transactions for the intervals that ended by `now` (at most `max_intervals`
        transactions: live readings, or history chunks); returns how many. Device trouble
        leaves everything as it was, to retry later."""
        stored = self.outbox.get_meta(COUNTERS_KEY)
        if stored is None:
            first = (now - backfill_seconds) // self.interval_seconds * self.interval_seconds
            baseline = self._counters(first)
            if baseline is None:
                return 0
            self.outbox.set_meta(COUNTERS_KEY, _encode(baseline))
            previous = baseline
        else:
            previous = _decode(stored)
        created = 0
        chunk: list[settlement_pb2.MeterReadingEntry] = []
        while created < max_intervals and previous.read_at + self.interval_seconds <= now:
            if not self.outbox.has_room():
                # Back-pressure: the cursor stays, so the intervals are read (from the
                # cumulative counters) once readings have left the outbox. Nothing is dropped.
                OUTBOX_FULL.inc()
                log.warning("outbox full (%d readings not yet seen committed); reading "
                            "later", self.outbox.pending())
                break
            boundary = previous.read_at + self.interval_seconds
            history = self.history_before_s > 0 and boundary + self.history_before_s < now
            if chunk and not history:
                created += self._flush(chunk, previous)
                continue
            current = self._counters(boundary)
            if current is None:
                break
            exported = current.exported_wh - previous.exported_wh
            imported = current.imported_wh - previous.imported_wh
            if exported < 0 or imported < 0:
                DEVICE_ERRORS.labels("counters_backwards").inc()
                log.error("counters went backwards in the interval ending %d; "
                          "re-basing without a reading", boundary)
                if chunk:
                    created += self._flush(chunk, previous)
                self.outbox.set_meta(COUNTERS_KEY, _encode(current))
                previous = current
                continue
            if history:
                chunk.append(settlement_pb2.MeterReadingEntry(
                    interval_start=previous.read_at, produced_wh=exported, consumed_wh=imported))
                previous = current
                if len(chunk) >= self.history_chunk:
                    created += self._flush(chunk, previous)
                continue
            reading = transaction_pb2.MeterReading(
                meter=self.identity.name, interval_start=previous.read_at,
                interval_seconds=self.interval_seconds, produced_wh=exported,
                consumed_wh=imported)
            envelope = self.identity.new_transaction("meter_reading", reading)
            self.outbox.append(envelope.SerializeToString(),
                               meta={COUNTERS_KEY: _encode(current)})
            self.last_interval_start = reading.interval_start
            READINGS_CREATED.inc()
            previous = current
            created += 1
        if chunk:
            created += self._flush(chunk, previous)
        if (self.history_before_s == 0
                or previous.read_at + self.interval_seconds + self.history_before_s >= now):
            self.caught_up.set()
        return created

    def _flush(self, chunk: list[settlement_pb2.MeterReadingEntry],
               cursor: CounterReading) -> int:
        """One HistoryReadings transaction of `chunk`, with the cursor after its last interval."""
        envelope = self.identity.new_transaction(
            "history_readings", settlement_pb2.HistoryReadings(readings=chunk))
        self.outbox.append(envelope.SerializeToString(), meta={COUNTERS_KEY: _encode(cursor)})
        self.last_interval_start = chunk[-1].interval_start
        READINGS_CREATED.inc(len(chunk))
        chunk.clear()
        return 1

    def _counters(self, at: int) -> CounterReading | None:
        reading = self.driver.read_counters(now=at)
        if reading is None:
            DEVICE_ERRORS.labels(self.driver.status().state.value).inc()
            return None
        return CounterReading(reading.exported_wh, reading.imported_wh, at)


def history_threshold(submission_window_s: int) -> int:
    """Age (since its interval ended) beyond which a reading goes as history: the ledger's
    submission window less a margin for sending and ordering (5 min, or half a short
    window), so a restarted agent still sends as live what can still be live. Half, because
    a live reading created with the backfill queues behind it: with a quarter of the fast
    profile's 30 s window (7 s) one reached the ledger after its deadline in CI."""
    return submission_window_s - min(300, submission_window_s // 2)


def wait_for_history(reader: IntervalReader, outbox: Outbox, stop: threading.Event,
                     poll_s: float = 1.0) -> bool:
    """Block until the reader has posted its backfill and the outbox has seen it all
    committed (or `stop`): a meter trades only after its onboarding history, which the ledger
    refuses once it has ordered. Returns False if stopped first."""
    while not stop.is_set():
        if reader.caught_up.is_set() and outbox.pending() == 0:
            return True
        stop.wait(poll_s)
    return False
