"""`errors.Code` and the rules' other enum aliases are plain namespaces of the protobuf enums'
numbers (plain_enum.py: fast attribute reads on every rule's check): each must name exactly its
enum's values, and its Name and Value must agree with the enum's, unknown numbers and names
included."""

from __future__ import annotations

import pytest

from gridledger.common.v1 import energy_pb2, settlement_pb2, validation_pb2
from gridledger_core.ledger.errors import Code, TxInvalid, code_name
from gridledger_core.ledger.rules import (
    energy_carbon,
    energy_contracts,
    energy_endings,
    money,
    settlement,
)

ENUM = validation_pb2.TxValidationCode
ALIASES = [(Code, ENUM), (money.Kind, settlement_pb2.EntryKind),
           (settlement.Kind, settlement_pb2.EntryKind),
           (energy_carbon.Status, energy_pb2.ContractStatus),
           (energy_contracts.Status, energy_pb2.ContractStatus),
           (energy_endings.Status, energy_pb2.ContractStatus)]


@pytest.mark.parametrize(("plain", "enum"), ALIASES)
def test_every_name_is_the_enums_number(plain: type, enum: object) -> None:
    assert enum.items()  # type: ignore[attr-defined]
    for name, number in enum.items():  # type: ignore[attr-defined]
        assert getattr(plain, name) == number
        assert plain.Name(number) == name and plain.Value(name) == number  # type: ignore[attr-defined]
    names = {n for n in vars(plain) if not n.startswith("_") and n not in ("Name", "Value")}
    assert names == set(enum.keys())  # type: ignore[attr-defined]


def test_names_and_unknowns_behave_as_the_enums() -> None:
    assert TxInvalid(Code.TX_VALIDATION_CODE_STATE_CONFLICT, "x").code_name == "STATE_CONFLICT"
    assert code_name(Code.TX_VALIDATION_CODE_VALID) == "VALID"
    with pytest.raises(ValueError):
        Code.Name(10_000)
    with pytest.raises(ValueError):
        Code.Value("NOT_A_CODE")
    with pytest.raises(AttributeError):
        Code.TX_VALIDATION_CODE_NOT_A_CODE  # noqa: B018
