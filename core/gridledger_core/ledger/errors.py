from __future__ import annotations

from typing import TYPE_CHECKING

from gridledger.common.v1 import energy_pb2, settlement_pb2, validation_pb2
from gridledger_core.plain_enum import plain_enum

# The enums the rules name on every check and money movement, as plain namespaces
# (plain_enum.py); type checkers see the generated enums.
if TYPE_CHECKING:
    Code = validation_pb2.TxValidationCode
    EntryKind = settlement_pb2.EntryKind
    ContractStatus = energy_pb2.ContractStatus
else:
    Code = plain_enum(validation_pb2.TxValidationCode)
    EntryKind = plain_enum(settlement_pb2.EntryKind)
    ContractStatus = plain_enum(energy_pb2.ContractStatus)


class TxInvalid(Exception):
    """A transaction breaks a rule. It carries the validation code committers record and a
    message that says which rule and why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        return Code.Name(self.code).removeprefix("TX_VALIDATION_CODE_")


def code_name(code: int) -> str:
    return Code.Name(code).removeprefix("TX_VALIDATION_CODE_")
