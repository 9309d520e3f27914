"""Modbus TCP meter driver (pymodbus), reading energy counters through a RegisterMap.

Each poll reads every mapped register in as few requests as possible (contiguous spans of
at most 125 registers, the Modbus limit), so counters and their scale factor come from
the same response. Failures never raise; they set a status and an exponential backoff
during which the device is left alone:

* UNREACHABLE: connection refused, reset or closed;
* TIMEOUT: connected but no answer within ``timeout_s``;
* DEVICE_ERROR: a Modbus exception response (e.g. illegal address);
* GARBAGE: not-implemented markers, a scale factor outside -10 ... 10, the wrong model
  ID, a counter lower than the last accepted one, or (with ``max_power_w``) a rise that
  no real installation could produce in the elapsed time.

After any failure the TCP connection is dropped, so a late answer to a timed-out request
can never be mistaken for the answer to the next one. The last accepted reading is kept:
a GARBAGE reading never replaces it. If a meter is genuinely replaced or reset, call
``reset_baseline()`` so its lower counters are accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gridledger_meter_agent.drivers.backoff import Backoff
from gridledger_meter_agent.drivers.base import (
    CounterReading,
    MeterDriver,
    MeterState,
    MeterStatus,
)
from gridledger_meter_agent.drivers.register_map import (
    SUNSPEC_203_MAP,
    DecodeError,
    RegisterMap,
    RegisterSpec,
    decode,
    scale_to_wh,
)

log = logging.getLogger(__name__)

MAX_REGISTERS_PER_READ = 125


class _Failure(Exception):
    def __init__(self, state: MeterState, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.detail = detail


def read_spans(specs: list[RegisterSpec]) -> list[tuple[int, int]]:
    """(start, count) requests covering all ``specs``, merged where they fit in one."""
    spans: list[tuple[int, int]] = []
    for spec in sorted(specs, key=lambda s: s.address):
        end = spec.address + spec.width
        if spans and end - spans[-1][0] <= MAX_REGISTERS_PER_READ:
            start, count = spans[-1]
            spans[-1] = (start, max(count, end - start))
        else:
            spans.append((spec.address, spec.width))
    return spans


class ModbusTcpMeter(MeterDriver):
    def __init__(
        self,
        host: str,
        port: int = 502,
        register_map: RegisterMap = SUNSPEC_203_MAP,
        *,
        timeout_s: float = 2.0,
        backoff: Backoff | None = None,
        max_power_w: int | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._map = register_map
        self._endpoint = f"{host}:{port}"
        self._client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0)
        self._backoff = backoff if backoff is not None else Backoff()
        self._max_power_w = max_power_w
        self._wall_clock = wall_clock
        self._spans = read_spans(register_map.specs())
        self._last: CounterReading | None = None
        self._state = MeterState.NOT_READ
        self._detail = "not read yet"
        self._last_ok_at: int | None = None

    @property
    def last_reading(self) -> CounterReading | None:
        return self._last

    def read_counters(self, now: int | None = None) -> CounterReading | None:
        if not self._backoff.ready():
            return None
        at = int(self._wall_clock()) if now is None else now
        try:
            exported, imported = self._read_wh()
            reading = CounterReading(exported, imported, at)
            self._check_plausible(reading)
        except _Failure as failure:
            self._fail(failure.state, failure.detail)
            return None
        except Exception as exc:  # the polling API must never raise for device trouble
            self._fail(MeterState.DEVICE_ERROR, f"unexpected {type(exc).__name__}: {exc}")
            return None
        if self._state is not MeterState.OK and self._state is not MeterState.NOT_READ:
            log.info("meter %s recovered after %s", self._endpoint, self._state.value)
        self._backoff.success()
        self._last = reading
        self._state, self._detail, self._last_ok_at = MeterState.OK, "ok", at
        return reading

    def status(self) -> MeterStatus:
        return MeterStatus(
            state=self._state,
            detail=self._detail,
            consecutive_failures=self._backoff.failures,
            retry_in_s=self._backoff.retry_in(),
            last_ok_at=self._last_ok_at,
        )

    def reset_baseline(self) -> None:
        """Forget the last accepted reading (after a meter swap or a counter reset)."""
        self._last = None

    def close(self) -> None:
        self._client.close()

    def _fail(self, state: MeterState, detail: str) -> None:
        self._client.close()
        if state is not self._state:
            log.warning("meter %s: %s (%s)", self._endpoint, state.value, detail)
        delay = self._backoff.failure()
        self._state, self._detail = state, f"{detail}; retrying in {delay:g}s"

    def _read_registers(self) -> dict[int, int]:
        if not self._client.connected and not self._client.connect():
            raise _Failure(MeterState.UNREACHABLE, f"cannot connect to {self._endpoint}")
        read = (
            self._client.read_holding_registers
            if self._map.table == "holding"
            else self._client.read_input_registers
        )
        words: dict[int, int] = {}
        for start, count in self._spans:
            try:
                response = read(start, count=count, device_id=self._map.device_id)
            except ConnectionException as exc:
                raise _Failure(MeterState.UNREACHABLE, f"connection lost: {exc}") from exc
            except ModbusIOException as exc:
                raise _Failure(MeterState.TIMEOUT, f"no answer from {self._endpoint}") from exc
            except ModbusException as exc:
                raise _Failure(MeterState.DEVICE_ERROR, str(exc)) from exc
            except OSError as exc:
                raise _Failure(MeterState.UNREACHABLE, f"socket error: {exc}") from exc
            if response.isError():
                code = getattr(response, "exception_code", "?")
                raise _Failure(
                    MeterState.DEVICE_ERROR,
                    f"exception code {code} reading {count} registers at {start}",
                )
            registers = list(response.registers)
            if len(registers) != count:
                raise _Failure(MeterState.GARBAGE, f"asked for {count} registers at {start}")
            words.update(zip(range(start, start + count), registers, strict=True))
        return words

    def _value(self, words: dict[int, int], spec: RegisterSpec) -> int:
        raw = [words[spec.address + i] for i in range(spec.width)]
        try:
            return decode(raw, spec, self._map.word_order)
        except DecodeError as exc:
            raise _Failure(MeterState.GARBAGE, str(exc)) from exc

    def _read_wh(self) -> tuple[int, int]:
        words = self._read_registers()
        if self._map.model_id is not None:
            model = self._value(words, self._map.model_id)
            if model != self._map.expected_model_id:
                raise _Failure(
                    MeterState.GARBAGE,
                    f"model id {model} where {self._map.expected_model_id} was expected",
                )
        exponent = self._map.scale_exponent
        if self._map.scale_factor is not None:
            exponent = self._value(words, self._map.scale_factor)
        try:
            exported = scale_to_wh(self._value(words, self._map.exported_wh), exponent)
            imported = scale_to_wh(self._value(words, self._map.imported_wh), exponent)
        except DecodeError as exc:
            raise _Failure(MeterState.GARBAGE, str(exc)) from exc
        return exported, imported

    def _check_plausible(self, reading: CounterReading) -> None:
        last = self._last
        if last is None:
            return
        for name, old, new in (
            ("exported", last.exported_wh, reading.exported_wh),
            ("imported", last.imported_wh, reading.imported_wh),
        ):
            if new < old:
                raise _Failure(
                    MeterState.GARBAGE, f"{name} counter went backwards: {old} -> {new} Wh"
                )
            if self._max_power_w is not None:
                elapsed = max(reading.read_at - last.read_at, 1)
                if (new - old) * 3600 > self._max_power_w * elapsed:
                    raise _Failure(
                        MeterState.GARBAGE,
                        f"{name} counter rose {new - old} Wh in {elapsed}s, more than "
                        f"{self._max_power_w} W could deliver",
                    )
