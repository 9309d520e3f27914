"""Where a Modbus meter keeps its energy counters, and how to decode them.

Addresses are zero-based Modbus PDU addresses (what goes on the wire; SunSpec documents
call PDU address 40000 "register 40001").

Default map: SunSpec model 203, wye-connect three-phase meter (integer + scale factor).
SunSpec devices start their map at base address 40000:

    40000-40001  "SunS" marker (0x5375 0x6E53)
    40002        model 1 (common) ID = 1
    40003        model 1 length L = 65
    40004-40068  model 1 body (manufacturer, model, serial, device address ...)
    40069        model 203 ID = 203            (base + 69)
    40070        model 203 length L = 105      (base + 70)
    40071 ...    model 203 body, point offsets relative to 40071:
      +36  TotWhExp   acc32  total exported real energy   -> 40107-40108
      +44  TotWhImp   acc32  total imported real energy   -> 40115-40116
      +52  TotWh_SF   sunssf scale factor of both         -> 40123

Energy in Wh = raw * 10 ** TotWh_SF. A meter whose common model has the optional pad
register (L = 66) shifts the meter model by one: pass a custom map for it.

Not-implemented markers (SunSpec): uint16 0xFFFF, int16 0x8000, uint32 0xFFFFFFFF,
int32 0x80000000, sunssf 0x8000. An acc32 of 0 means "nothing accumulated", which is a
legitimate reading for a meter that never exported; a fall back to 0 is caught as a
counter going backwards by the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RegisterType = Literal["uint16", "int16", "uint32", "int32", "acc32", "sunssf"]
WordOrder = Literal["big", "little"]
RegisterTable = Literal["holding", "input"]

_WIDTH: dict[str, int] = {
    "uint16": 1,
    "int16": 1,
    "sunssf": 1,
    "uint32": 2,
    "int32": 2,
    "acc32": 2,
}
_NOT_IMPLEMENTED: dict[str, int | None] = {
    "uint16": 0xFFFF,
    "int16": 0x8000,
    "sunssf": 0x8000,
    "uint32": 0xFFFFFFFF,
    "int32": 0x80000000,
    "acc32": None,
}
_SIGNED = {"int16", "sunssf", "int32"}
# SunSpec limits scale factors to -10 ... 10.
SCALE_FACTOR_RANGE = range(-10, 11)

SUNSPEC_BASE = 40000
SUNSPEC_203_BLOCK = SUNSPEC_BASE + 71


class DecodeError(ValueError):
    """Register contents that cannot be a real counter value."""


@dataclass(frozen=True)
class RegisterSpec:
    address: int
    type: RegisterType

    def __post_init__(self) -> None:
        if self.type not in _WIDTH:
            raise ValueError(f"unknown register type {self.type!r}")
        if not 0 <= self.address <= 0xFFFF - _WIDTH[self.type] + 1:
            raise ValueError(f"register address {self.address} out of range")

    @property
    def width(self) -> int:
        return _WIDTH[self.type]

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "type": self.type}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegisterSpec:
        return cls(address=int(data["address"]), type=data["type"])


@dataclass(frozen=True)
class RegisterMap:
    """Registers holding the two energy counters and how to scale them to Wh."""

    exported_wh: RegisterSpec
    imported_wh: RegisterSpec
    # A sunssf register scaling both counters; if None, ``scale_exponent`` applies.
    scale_factor: RegisterSpec | None = None
    scale_exponent: int = 0
    word_order: WordOrder = "big"  # "big": high word first (SunSpec)
    device_id: int = 1
    table: RegisterTable = "holding"
    # Optional identity check read with the counters (e.g. the SunSpec model ID).
    model_id: RegisterSpec | None = None
    expected_model_id: int | None = None

    def __post_init__(self) -> None:
        for spec in (self.exported_wh, self.imported_wh):
            if spec.type not in ("uint16", "uint32", "acc32"):
                raise ValueError("energy counters must be unsigned (uint16, uint32, acc32)")
        if self.scale_factor is not None and self.scale_factor.type not in ("sunssf", "int16"):
            raise ValueError("the scale factor register must be sunssf or int16")
        if self.scale_exponent not in SCALE_FACTOR_RANGE:
            raise ValueError("scale_exponent must be within -10 ... 10")
        if self.word_order not in ("big", "little"):
            raise ValueError("word_order must be 'big' or 'little'")
        if self.table not in ("holding", "input"):
            raise ValueError("table must be 'holding' or 'input'")
        if (self.model_id is None) != (self.expected_model_id is None):
            raise ValueError("model_id and expected_model_id go together")
        if not 0 <= self.device_id <= 255:
            raise ValueError("device_id must be within 0 ... 255")

    def specs(self) -> list[RegisterSpec]:
        optional = [self.scale_factor, self.model_id]
        return [self.exported_wh, self.imported_wh, *[s for s in optional if s is not None]]

    def to_dict(self) -> dict[str, Any]:
        """YAML/JSON-friendly form; ``from_dict`` reads it back."""
        data: dict[str, Any] = {
            "exported_wh": self.exported_wh.to_dict(),
            "imported_wh": self.imported_wh.to_dict(),
            "scale_exponent": self.scale_exponent,
            "word_order": self.word_order,
            "device_id": self.device_id,
            "table": self.table,
        }
        if self.scale_factor is not None:
            data["scale_factor"] = self.scale_factor.to_dict()
        if self.model_id is not None:
            data["model_id"] = self.model_id.to_dict()
            data["expected_model_id"] = self.expected_model_id
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegisterMap:
        known = {
            "exported_wh",
            "imported_wh",
            "scale_factor",
            "scale_exponent",
            "word_order",
            "device_id",
            "table",
            "model_id",
            "expected_model_id",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown register map keys: {sorted(unknown)}")

        def spec(key: str) -> RegisterSpec | None:
            return RegisterSpec.from_dict(data[key]) if data.get(key) is not None else None

        exported, imported = spec("exported_wh"), spec("imported_wh")
        if exported is None or imported is None:
            raise ValueError("exported_wh and imported_wh are required")
        expected = data.get("expected_model_id")
        return cls(
            exported_wh=exported,
            imported_wh=imported,
            scale_factor=spec("scale_factor"),
            scale_exponent=int(data.get("scale_exponent", 0)),
            word_order=data.get("word_order", "big"),
            device_id=int(data.get("device_id", 1)),
            table=data.get("table", "holding"),
            model_id=spec("model_id"),
            expected_model_id=None if expected is None else int(expected),
        )


SUNSPEC_203_MAP = RegisterMap(
    exported_wh=RegisterSpec(SUNSPEC_203_BLOCK + 36, "acc32"),
    imported_wh=RegisterSpec(SUNSPEC_203_BLOCK + 44, "acc32"),
    scale_factor=RegisterSpec(SUNSPEC_203_BLOCK + 52, "sunssf"),
    word_order="big",
    model_id=RegisterSpec(SUNSPEC_BASE + 69, "uint16"),
    expected_model_id=203,
)


def decode(words: list[int], spec: RegisterSpec, word_order: WordOrder) -> int:
    """Integer value of ``spec`` from its raw 16-bit words; DecodeError for markers."""
    if len(words) != spec.width or any(not 0 <= w <= 0xFFFF for w in words):
        raise DecodeError(f"register {spec.address}: malformed response")
    ordered = words if word_order == "big" else list(reversed(words))
    raw = 0
    for word in ordered:
        raw = (raw << 16) | word
    if raw == _NOT_IMPLEMENTED[spec.type]:
        raise DecodeError(f"register {spec.address}: not-implemented marker 0x{raw:X}")
    bits = 16 * spec.width
    if spec.type in _SIGNED and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return raw


def scale_to_wh(raw: int, exponent: int) -> int:
    """``raw * 10 ** exponent`` in whole Wh (floored: a counter shows what has accrued)."""
    if exponent not in SCALE_FACTOR_RANGE:
        raise DecodeError(f"scale factor {exponent} outside -10 ... 10")
    if exponent >= 0:
        return raw * 10**exponent
    return raw // 10**-exponent
