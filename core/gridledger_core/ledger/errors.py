from __future__ import annotations

from typing import TYPE_CHECKING

from gridledger.common.v1 import validation_pb2
from gridledger_core.plain_enum import plain_enum

if TYPE_CHECKING:
    Code = validation_pb2.TxValidationCode
else:
    # Every rule names a code on every check: a plain namespace (plain_enum.py).
    Code = plain_enum(validation_pb2.TxValidationCode)


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
