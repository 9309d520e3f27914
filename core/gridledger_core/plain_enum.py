"""Protobuf enums as plain class namespaces, for the ledger rules' hot paths.

A generated enum (`validation_pb2.TxValidationCode`) answers `Enum.NAME` through a Python
`__getattr__` on its wrapper: about 1 µs a read, against 0.02 µs for a class attribute. The
rules name a validation code on every check and an entry kind or contract status on every
money movement, so at run time they use a plain class with the same numbers, and `Name` and
`Value` as the enum has them; type checkers still see the generated enum (modules alias it
under `TYPE_CHECKING`)."""

from __future__ import annotations

from typing import Any


def plain_enum(enum: Any) -> type:
    """A class whose attributes are `enum`'s value names with their numbers, plus its `Name`
    and `Value` (which raise ValueError for unknown numbers and names, as the enum does)."""
    namespace: dict[str, object] = dict(enum.items())
    namespace["Name"] = staticmethod(enum.Name)
    namespace["Value"] = staticmethod(enum.Value)
    return type(enum.DESCRIPTOR.name, (), namespace)
