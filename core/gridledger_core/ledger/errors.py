from __future__ import annotations

from typing import TYPE_CHECKING

from gridledger.common.v1 import validation_pb2


def _plain_codes() -> type:
    """TxValidationCode's numbers as plain class attributes, with its Name and Value. Every
    rule names a code on every check (`require(ok, Code.X, ...)`), and the protobuf enum
    wrapper answers each attribute through a Python `__getattr__` (about 1 µs; 2-5 % of a
    committer's CPU samples at the max rate); a class attribute is a dictionary lookup."""
    enum = validation_pb2.TxValidationCode
    namespace: dict[str, object] = dict(enum.items())
    namespace["Name"] = staticmethod(enum.Name)
    namespace["Value"] = staticmethod(enum.Value)
    return type("TxValidationCode", (), namespace)


if TYPE_CHECKING:
    Code = validation_pb2.TxValidationCode
else:
    Code = _plain_codes()


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
