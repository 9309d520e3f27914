"""The one interface the meter-agent uses to talk to metering hardware.

A driver reads the meter's cumulative energy counters: exported watt-hours (fed into the
grid) and imported watt-hours (taken from it). Interval energy is the difference of two
counter readings (``interval_energy``), so a reading missed while the device was down is
never lost: the next good reading covers the gap.

Polling never raises: a failed read returns ``None`` and ``status()`` says what is wrong.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass


class MeterState(enum.StrEnum):
    NOT_READ = "not_read"  # no read attempted yet
    OK = "ok"
    UNREACHABLE = "unreachable"  # connection refused, reset or closed
    TIMEOUT = "timeout"  # connected, but the device did not answer in time
    DEVICE_ERROR = "device_error"  # the device answered with a Modbus exception
    GARBAGE = "garbage"  # answered, but the values cannot be real counters


@dataclass(frozen=True)
class MeterStatus:
    state: MeterState
    detail: str
    consecutive_failures: int = 0
    # Seconds until the driver will touch the device again (0 when it would now).
    retry_in_s: float = 0.0
    last_ok_at: int | None = None

    @property
    def ok(self) -> bool:
        return self.state is MeterState.OK


@dataclass(frozen=True)
class CounterReading:
    exported_wh: int
    imported_wh: int
    read_at: int  # Unix seconds


@dataclass(frozen=True)
class IntervalEnergy:
    start: int
    end: int
    exported_wh: int
    imported_wh: int


class MeterDriver(ABC):
    """A meter. Implementations are used from one thread at a time."""

    @abstractmethod
    def read_counters(self, now: int | None = None) -> CounterReading | None:
        """Current cumulative counters, stamped ``now`` (default: the wall clock), or
        ``None`` when they cannot be had right now; never raises for device trouble."""

    @abstractmethod
    def status(self) -> MeterStatus:
        """What the last attempt found."""

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections; the driver may be used again afterwards."""


def interval_energy(earlier: CounterReading, later: CounterReading) -> IntervalEnergy:
    """Energy between two readings of the same meter."""
    if later.read_at < earlier.read_at:
        raise ValueError("readings are out of order")
    exported = later.exported_wh - earlier.exported_wh
    imported = later.imported_wh - earlier.imported_wh
    if exported < 0 or imported < 0:
        raise ValueError("counters went backwards between the readings")
    return IntervalEnergy(earlier.read_at, later.read_at, exported, imported)
