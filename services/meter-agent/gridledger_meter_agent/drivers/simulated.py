"""A meter simulated from a seeded profile (the default driver).

The counters are a pure function of (profile, commissioning time, now): counting starts at
the first quarter-hour boundary at or after ``commissioned_at``; each full quarter hour
adds its netted export/import (integer mWh); the quarter hour in progress adds its
pro-rated share, floored; the counter is the floor of the total in Wh. A restarted agent
therefore reads exactly the counters it would have read had it never stopped, and the
counters never decrease as ``now`` advances.
"""

from __future__ import annotations

import time

from gridledger_core.profiles.energy import SlotProfile, net_per_slot
from gridledger_core.profiles.timegrid import SLOT_SECONDS
from gridledger_meter_agent.drivers.base import (
    CounterReading,
    MeterDriver,
    MeterState,
    MeterStatus,
)

# Slots evaluated per profile call while catching up (30 days): bounds memory, keeps
# numpy vectorised.
_CHUNK_SLOTS = 30 * 96


class SimulatedMeter(MeterDriver):
    def __init__(self, profile: SlotProfile, commissioned_at: int) -> None:
        self._profile = profile
        self._first_slot = -(-commissioned_at // SLOT_SECONDS)
        # Cache of whole-slot totals: counters cover slots [first_slot, _cached_slot).
        self._cached_slot = self._first_slot
        self._exported_mwh = 0
        self._imported_mwh = 0
        self._status = MeterStatus(MeterState.NOT_READ, "not read yet")

    def _net(self, first: int, count: int) -> tuple[list[int], list[int]]:
        produced, consumed = self._profile.slot_energy_mwh(first, count)
        exported, imported = net_per_slot(produced, consumed)
        return exported.tolist(), imported.tolist()

    def _advance_to(self, slot: int) -> None:
        if slot < self._cached_slot:  # asked about an earlier time: start over
            self._cached_slot, self._exported_mwh, self._imported_mwh = self._first_slot, 0, 0
        while self._cached_slot < slot:
            count = min(_CHUNK_SLOTS, slot - self._cached_slot)
            exported, imported = self._net(self._cached_slot, count)
            self._exported_mwh += sum(exported)
            self._imported_mwh += sum(imported)
            self._cached_slot += count

    def counters_mwh(self, now: int) -> tuple[int, int]:
        """(exported, imported) mWh since commissioning at Unix time ``now``."""
        current = now // SLOT_SECONDS
        if current < self._first_slot:
            return 0, 0
        self._advance_to(current)
        elapsed = now - current * SLOT_SECONDS
        exported, imported = self._net(current, 1)
        return (
            self._exported_mwh + exported[0] * elapsed // SLOT_SECONDS,
            self._imported_mwh + imported[0] * elapsed // SLOT_SECONDS,
        )

    def read_counters(self, now: int | None = None) -> CounterReading | None:
        at = int(time.time()) if now is None else now
        exported_mwh, imported_mwh = self.counters_mwh(at)
        self._status = MeterStatus(MeterState.OK, "simulated", last_ok_at=at)
        return CounterReading(exported_mwh // 1000, imported_mwh // 1000, at)

    def status(self) -> MeterStatus:
        return self._status
