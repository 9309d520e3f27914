"""Metering hardware behind one interface: a simulated meter (default) and Modbus TCP."""

from gridledger_meter_agent.drivers.backoff import Backoff
from gridledger_meter_agent.drivers.base import (
    CounterReading,
    IntervalEnergy,
    MeterDriver,
    MeterState,
    MeterStatus,
    interval_energy,
)
from gridledger_meter_agent.drivers.modbus_tcp import ModbusTcpMeter
from gridledger_meter_agent.drivers.register_map import (
    SUNSPEC_203_MAP,
    DecodeError,
    RegisterMap,
    RegisterSpec,
)
from gridledger_meter_agent.drivers.simulated import SimulatedMeter

__all__ = [
    "SUNSPEC_203_MAP",
    "Backoff",
    "CounterReading",
    "DecodeError",
    "IntervalEnergy",
    "MeterDriver",
    "MeterState",
    "MeterStatus",
    "ModbusTcpMeter",
    "RegisterMap",
    "RegisterSpec",
    "SimulatedMeter",
    "interval_energy",
]
