"""ModbusTcpMeter against a real pymodbus TCP server on loopback serving a SunSpec map."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridledger_meter_agent.drivers import (
    SUNSPEC_203_MAP,
    Backoff,
    DecodeError,
    MeterState,
    ModbusTcpMeter,
    RegisterMap,
    RegisterSpec,
)
from gridledger_meter_agent.drivers.modbus_tcp import read_spans
from gridledger_meter_agent.drivers.register_map import decode, scale_to_wh

BASE = 40000
SIZE = 300


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SunSpecDevice:
    """A SunSpec meter (common model 1 + meter model 203) served by pymodbus on loopback.

    Registers live in ``self.registers`` (index 0 = address 40000); every read copies them
    into the server's datastore, so tests change the device by assigning to the list.
    """

    def __init__(self) -> None:
        self.registers = [0] * SIZE
        self.registers[0:2] = [0x5375, 0x6E53]  # "SunS"
        self.registers[2:4] = [1, 65]  # common model header
        self.registers[69:71] = [203, 105]  # meter model header
        self.hang = False
        self.exception: ExcCodes | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: ModbusTcpServer | None = None
        self._release: asyncio.Event | None = None

    def set_counters(self, exported_raw: int, imported_raw: int, scale_factor: int) -> None:
        block = 71
        self.registers[block + 36 : block + 38] = [exported_raw >> 16, exported_raw & 0xFFFF]
        self.registers[block + 44 : block + 46] = [imported_raw >> 16, imported_raw & 0xFFFF]
        self.registers[block + 52] = scale_factor & 0xFFFF

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.hang:
            assert self._release is not None
            await self._release.wait()
        if self.exception is not None:
            return self.exception
        current[:] = self.registers
        return None

    async def _start(self, port: int) -> int:
        self._release = asyncio.Event()
        device = SimDevice(
            id=1,
            simdata=[SimData(BASE, count=SIZE, values=0, datatype=DataType.REGISTERS)],
            action=self._action,
        )
        self._server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await self._server.serve_forever(background=True)
        return self._server.transport.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None and self._release is not None
        self._release.set()  # let hung requests finish so the server can close
        await self._server.shutdown()
        self._server = None

    def start(self) -> None:
        """Start serving; a restart reuses the first port so clients can come back."""
        self.port = asyncio.run_coroutine_threadsafe(self._start(self.port), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)

    def close(self) -> None:
        if self._server is not None:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture
def device() -> Iterator[SunSpecDevice]:
    dev = SunSpecDevice()
    dev.set_counters(123_456, 654_321, -1)
    dev.start()
    yield dev
    dev.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_meter(
    port: int, clock: FakeClock, register_map: RegisterMap = SUNSPEC_203_MAP, **kwargs: object
) -> ModbusTcpMeter:
    backoff = Backoff(initial_s=1.0, max_s=8.0, clock=clock)
    return ModbusTcpMeter("127.0.0.1", port, register_map, timeout_s=0.5, backoff=backoff, **kwargs)


def test_reads_sunspec_203_counters_with_scale_factor(
    device: SunSpecDevice, clock: FakeClock
) -> None:
    meter = make_meter(device.port, clock)
    try:
        reading = meter.read_counters(now=1_700_000_000)
        assert reading is not None
        assert (reading.exported_wh, reading.imported_wh) == (12_345, 65_432)
        assert reading.read_at == 1_700_000_000
        assert meter.status().state is MeterState.OK

        device.set_counters(123_456, 654_321, 2)  # 10**2 Wh per count
        reading = meter.read_counters(now=1_700_000_060)
        assert reading is not None
        assert (reading.exported_wh, reading.imported_wh) == (12_345_600, 65_432_100)
    finally:
        meter.close()


def test_custom_map_from_yaml_dict_with_little_endian_words(
    device: SunSpecDevice, clock: FakeClock
) -> None:
    config = {
        "exported_wh": {"address": BASE + 250, "type": "uint32"},
        "imported_wh": {"address": BASE + 252, "type": "uint32"},
        "scale_exponent": 1,
        "word_order": "little",
    }
    register_map = RegisterMap.from_dict(config)
    assert RegisterMap.from_dict(register_map.to_dict()) == register_map
    device.registers[250:254] = [0x0002, 0x0001, 0x0005, 0x0000]  # low word first
    meter = make_meter(device.port, clock, register_map)
    try:
        reading = meter.read_counters(now=1)
        assert reading is not None
        assert (reading.exported_wh, reading.imported_wh) == (0x0001_0002 * 10, 5 * 10)
    finally:
        meter.close()


def test_device_stops_answering_then_recovers_with_backoff(
    device: SunSpecDevice, clock: FakeClock
) -> None:
    meter = make_meter(device.port, clock)
    try:
        assert meter.read_counters(now=100) is not None
        device.stop()

        assert meter.read_counters(now=160) is None
        status = meter.status()
        assert status.state is MeterState.UNREACHABLE
        assert status.consecutive_failures == 1
        assert status.retry_in_s == pytest.approx(1.0)
        assert status.last_ok_at == 100

        # Inside the backoff window the device is not touched: no new failure recorded.
        assert meter.read_counters(now=161) is None
        assert meter.status().consecutive_failures == 1

        clock.advance(1.0)
        assert meter.read_counters(now=170) is None
        assert meter.status().consecutive_failures == 2
        assert meter.status().retry_in_s == pytest.approx(2.0)  # doubled

        device.set_counters(123_466, 654_331, -1)
        device.start()
        clock.advance(2.0)
        reading = meter.read_counters(now=180)
        assert reading is not None
        assert (reading.exported_wh, reading.imported_wh) == (12_346, 65_433)
        assert meter.status().state is MeterState.OK
        assert meter.status().consecutive_failures == 0
    finally:
        meter.close()


def test_device_that_hangs_times_out_and_recovers(device: SunSpecDevice, clock: FakeClock) -> None:
    meter = make_meter(device.port, clock)
    try:
        assert meter.read_counters(now=1) is not None
        device.hang = True
        assert meter.read_counters(now=2) is None
        assert meter.status().state is MeterState.TIMEOUT
        device.hang = False
        clock.advance(1.0)
        assert meter.read_counters(now=3) is not None
        assert meter.status().state is MeterState.OK
    finally:
        meter.close()


def test_nothing_listening_is_unreachable_not_an_exception(clock: FakeClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    meter = make_meter(port, clock)
    assert meter.read_counters() is None
    assert meter.status().state is MeterState.UNREACHABLE
    assert "cannot connect" in meter.status().detail
    meter.close()


def _not_implemented_scale(dev: SunSpecDevice) -> None:
    dev.registers[71 + 52] = 0x8000


def _scale_out_of_range(dev: SunSpecDevice) -> None:
    dev.registers[71 + 52] = 11


def _counter_backwards(dev: SunSpecDevice) -> None:
    dev.set_counters(123_000, 654_321, -1)


def _wrong_model(dev: SunSpecDevice) -> None:
    dev.registers[69] = 201


def _implausible_jump(dev: SunSpecDevice) -> None:
    dev.set_counters(123_456 + 10_000_000, 654_321, -1)  # 1 MWh in a minute


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_not_implemented_scale, "not-implemented marker"),
        (_scale_out_of_range, "outside -10 ... 10"),
        (_counter_backwards, "went backwards"),
        (_wrong_model, "model id 201"),
        (_implausible_jump, "more than 50000 W"),
    ],
)
def test_garbage_is_rejected_and_last_good_reading_kept(
    device: SunSpecDevice, clock: FakeClock, corrupt, expected: str
) -> None:
    meter = make_meter(device.port, clock, max_power_w=50_000)
    try:
        good = meter.read_counters(now=1000)
        assert good is not None
        saved = list(device.registers)
        corrupt(device)
        assert meter.read_counters(now=1060) is None
        status = meter.status()
        assert status.state is MeterState.GARBAGE
        assert expected in status.detail
        assert meter.last_reading == good

        device.registers[:] = saved
        clock.advance(1.0)
        assert meter.read_counters(now=1120) is not None
        assert meter.status().state is MeterState.OK
    finally:
        meter.close()


def test_modbus_exception_response_is_a_device_error(
    device: SunSpecDevice, clock: FakeClock
) -> None:
    meter = make_meter(device.port, clock)
    try:
        device.exception = ExcCodes.DEVICE_BUSY
        assert meter.read_counters(now=1) is None
        assert meter.status().state is MeterState.DEVICE_ERROR
        device.exception = None
        clock.advance(1.0)
        assert meter.read_counters(now=2) is not None
    finally:
        meter.close()


def test_reset_baseline_accepts_a_replaced_meter(device: SunSpecDevice, clock: FakeClock) -> None:
    meter = make_meter(device.port, clock)
    try:
        assert meter.read_counters(now=1) is not None
        device.set_counters(10, 20, 0)
        assert meter.read_counters(now=2) is None
        meter.reset_baseline()
        clock.advance(1.0)
        reading = meter.read_counters(now=3)
        assert reading is not None and (reading.exported_wh, reading.imported_wh) == (10, 20)
    finally:
        meter.close()


def test_decode_markers_signs_and_word_order() -> None:
    assert decode([0x0001, 0x0002], RegisterSpec(0, "uint32"), "big") == 0x0001_0002
    assert decode([0x0001, 0x0002], RegisterSpec(0, "uint32"), "little") == 0x0002_0001
    assert decode([0xFFFE], RegisterSpec(0, "sunssf"), "big") == -2
    assert decode([0, 0], RegisterSpec(0, "acc32"), "big") == 0
    for words, kind in (([0xFFFF, 0xFFFF], "uint32"), ([0x8000], "int16"), ([0xFFFF], "uint16")):
        with pytest.raises(DecodeError):
            decode(words, RegisterSpec(0, kind), "big")
    assert scale_to_wh(12_345, -2) == 123
    with pytest.raises(DecodeError):
        scale_to_wh(1, -11)


def test_sunspec_203_addresses_and_read_spans() -> None:
    assert SUNSPEC_203_MAP.exported_wh.address == 40107
    assert SUNSPEC_203_MAP.imported_wh.address == 40115
    assert SUNSPEC_203_MAP.scale_factor == RegisterSpec(40123, "sunssf")
    assert read_spans(SUNSPEC_203_MAP.specs()) == [(40069, 55)]
    far = [RegisterSpec(0, "uint32"), RegisterSpec(200, "uint16")]
    assert read_spans(far) == [(0, 2), (200, 1)]


def test_register_map_rejects_bad_configs() -> None:
    with pytest.raises(ValueError):
        RegisterMap.from_dict({"exported_wh": {"address": 1, "type": "uint32"}})
    with pytest.raises(ValueError):
        RegisterMap.from_dict(
            {
                "exported_wh": {"address": 1, "type": "int16"},
                "imported_wh": {"address": 3, "type": "uint32"},
            }
        )
    with pytest.raises(ValueError):
        RegisterMap.from_dict(
            {
                "exported_wh": {"address": 1, "type": "uint32"},
                "imported_wh": {"address": 3, "type": "uint32"},
                "typo": 1,
            }
        )
