"""`errors.Code` is a plain namespace of the TxValidationCode numbers (fast attribute reads on
every rule's check): it must name exactly the enum's values, and its Name and Value must agree
with the enum's, unknown numbers and names included."""

from __future__ import annotations

import pytest

from gridledger.common.v1 import validation_pb2
from gridledger_core.ledger.errors import Code, TxInvalid, code_name

ENUM = validation_pb2.TxValidationCode


def test_every_code_is_the_enums_number() -> None:
    assert ENUM.items()
    for name, number in ENUM.items():
        assert getattr(Code, name) == number
        assert Code.Name(number) == name and Code.Value(name) == number
    names = {n for n in vars(Code) if n.startswith("TX_VALIDATION_CODE_")}
    assert names == set(ENUM.keys())


def test_names_and_unknowns_behave_as_the_enums() -> None:
    assert TxInvalid(Code.TX_VALIDATION_CODE_STATE_CONFLICT, "x").code_name == "STATE_CONFLICT"
    assert code_name(Code.TX_VALIDATION_CODE_VALID) == "VALID"
    with pytest.raises(ValueError):
        Code.Name(10_000)
    with pytest.raises(ValueError):
        Code.Value("NOT_A_CODE")
    with pytest.raises(AttributeError):
        Code.TX_VALIDATION_CODE_NOT_A_CODE  # noqa: B018
