"""Outputs of the replica state machine, executed by the adapter in list order.

Durability rule: every ``Persist`` and ``Deliver`` must be durable (LMDB transaction
committed and synced) before any ``Send`` or ``Broadcast`` that follows it in the same list
is handed to the network. Writing all of a list's Persist/Deliver actions in one synced
transaction first, then sending, satisfies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2


@dataclass(frozen=True)
class Send:
    """Send ``message`` to orderer ``to`` (best effort; loss is tolerated)."""

    to: str
    message: consensus_pb2.ConsensusMessage


@dataclass(frozen=True)
class Broadcast:
    """Send ``message`` to every other orderer (best effort)."""

    message: consensus_pb2.ConsensusMessage


@dataclass(frozen=True)
class Persist:
    """Durably store ``value`` under ``key`` (overwrite), synced before later sends.

    Give every stored key/value back to the replica constructor after a restart."""

    key: str
    value: bytes


@dataclass(frozen=True)
class Deliver:
    """A final block with its commit certificate. Append it durably to the block store (so
    ``get_block(number)`` returns it from now on), keep ``seed`` with it (the next block's
    previous seed), then stream it to Deliver clients."""

    block: block_pb2.Block
    seed: bytes


@dataclass(frozen=True)
class SetTimer:
    """(Re)arm the one timer called ``name`` to call ``on_timer(name, now)`` after ``delay``
    seconds, replacing any pending timer of that name. Early or stale calls are ignored by
    the replica, so the adapter never needs to cancel timers."""

    name: str
    delay: float


@dataclass(frozen=True)
class Evidence:
    """Proof that an orderer signed two conflicting statements (see ``evidence``). It changes
    nothing in consensus: count it, keep it durably (bounded) and show it to operators."""

    evidence: consensus_pb2.EquivocationEvidence


Action = Send | Broadcast | Persist | Deliver | SetTimer | Evidence
