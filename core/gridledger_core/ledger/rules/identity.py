"""Rules of accounts and certificates (issue 13): an organisation's admin registers meters and
plants of its organisation, and revokes certificates its own CA issued. `LedgerAccounts` is how
every signer check reads them back: point lookups in the state being judged (a block's overlay
at this transaction, or the endorser's committed state), so every committer agrees.

State keys:

    account/<name>                      -> AccountRecord (registered on the ledger)
    account-index/count                 -> number of registrations (8 bytes BE)
    account-index/<n, 12 digits>        -> name of the n-th registration (n from 1)
    revoked/fp/<SHA-256 hex of the DER> -> RevocationRecord
    revoked/serial/<org>/<serial hex>   -> RevocationRecord
    revocation-index/count              -> number of revocations (8 bytes BE)
    revocation-index/<n, 12 digits>     -> the revoked/ key of the n-th revocation
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

from gridledger.common.v1 import identity_pb2
from gridledger_core.identity import LEDGER_ROLES, Account, Identity, Role, UnknownSigner
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require

ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SERIAL = re.compile(r"0|[1-9a-f][0-9a-f]{0,39}")
MAX_REASON = 256

NOT_AUTHORIZED = Code.TX_VALIDATION_CODE_NOT_AUTHORIZED
INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT


def account_key(name: str) -> str:
    return f"account/{name}"


def account_index_key(n: int) -> str:
    return f"account-index/{n:012d}"


ACCOUNT_COUNT = "account-index/count"
REVOCATION_COUNT = "revocation-index/count"


def revoked_fingerprint_key(fingerprint: bytes) -> str:
    return f"revoked/fp/{fingerprint.hex()}"


def revoked_serial_key(org: str, serial: str) -> str:
    return f"revoked/serial/{org}/{serial}"


def revocation_index_key(n: int) -> str:
    return f"revocation-index/{n:012d}"


class StateReader(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...


class LedgerAccounts:
    """The identity.AccountBook of one state: registered accounts and revocations."""

    def __init__(self, state: StateReader) -> None:
        self._state = state

    def registered(self, name: str) -> Account | None:
        raw = self._state.get(account_key(name))
        if raw is None:
            return None
        record = identity_pb2.AccountRecord.FromString(raw)
        return Account(record.account, record.organization, Role(record.role))

    def revoked_at(self, identity: Identity) -> int | None:
        # Both keys in one read (every signer of every transaction is looked up).
        by_fingerprint, by_serial = self._state.get_many(
            [revoked_fingerprint_key(identity.fingerprint),
             revoked_serial_key(identity.org, identity.serial)])
        raw = by_fingerprint or by_serial
        return identity_pb2.RevocationRecord.FromString(raw).height if raw else None


def _append(state: StateOverlay, count_key: str, entry_key: Callable[[int], str],
            value: bytes) -> None:
    """Append to a numbered index, so clients list through point lookups (GetState)."""
    raw = state.get(count_key)
    n = (int.from_bytes(raw, "big") if raw else 0) + 1
    state.put(count_key, n.to_bytes(8, "big"))
    state.put(entry_key(n), value)


def _require_admin(ctx: TxContext, what: str) -> None:
    creator = ctx.checked.creator
    require(creator.role == Role.ADMIN, NOT_AUTHORIZED,
            f"{creator.name} is a {creator.role}; only an organisation's admin {what}")


def process_register_account(state: StateOverlay, ctx: TxContext,
                             body: identity_pb2.RegisterAccount) -> None:
    creator = ctx.checked.creator
    _require_admin(ctx, "registers accounts")
    require(ACCOUNT_NAME.fullmatch(body.account) is not None, INVALID,
            f"account name {body.account!r} is not 1-64 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit")
    require(body.role in {r.value for r in LEDGER_ROLES}, NOT_AUTHORIZED,
            f"role {body.role!r} cannot be registered on the ledger: only meter and plant; "
            "node roles are the identities the genesis names")
    known = ctx.genesis.accounts.get(body.account) or LedgerAccounts(state).registered(
        body.account)
    require(known is None, CONFLICT,
            f"account {body.account} already exists: a {known.role if known else ''} of "
            f"{known.org if known else ''}")
    record = identity_pb2.AccountRecord(account=body.account, organization=creator.org,
                                        role=body.role, height=ctx.height,
                                        registered_at=ctx.block_time, tx_id=ctx.checked.tx_id)
    state.put(account_key(body.account), record.SerializeToString(deterministic=True))
    _append(state, ACCOUNT_COUNT, account_index_key, body.account.encode())


def process_revoke_certificate(state: StateOverlay, ctx: TxContext,
                               body: identity_pb2.RevokeCertificate) -> None:
    creator = ctx.checked.creator
    _require_admin(ctx, "revokes certificates")
    require(len(body.reason) <= MAX_REASON, INVALID,
            f"reason is longer than {MAX_REASON} characters")
    record = identity_pb2.RevocationRecord(
        organization=creator.org, height=ctx.height, revoked_at=ctx.block_time,
        tx_id=ctx.checked.tx_id, reason=body.reason, revoked_by=creator.name)
    target = body.WhichOneof("target")
    if target == "certificate":
        try:
            subject = ctx.signers.membership.certificate(body.certificate)
        except UnknownSigner as exc:
            raise TxInvalid(INVALID, f"the certificate to revoke is not one of the "
                                     f"consortium's: {exc}") from exc
        require(subject.org == creator.org, NOT_AUTHORIZED,
                f"the certificate of {subject.name} was issued by {subject.org}'s CA; an "
                f"admin of {creator.org} revokes only {creator.org}'s certificates")
        key = revoked_fingerprint_key(subject.fingerprint)
        record.fingerprint, record.serial, record.account = (subject.fingerprint, subject.serial,
                                                             subject.name)
    elif target == "serial":
        require(SERIAL.fullmatch(body.serial) is not None, INVALID,
                f"serial {body.serial!r} is not lowercase hex without leading zeros")
        key = revoked_serial_key(creator.org, body.serial)
        record.serial = body.serial
    else:
        raise TxInvalid(INVALID, "name the certificate to revoke (certificate or serial)")
    earlier = state.get(key)
    require(earlier is None, CONFLICT,
            "the certificate was already revoked at height "
            f"{identity_pb2.RevocationRecord.FromString(earlier).height if earlier else 0}")
    state.put(key, record.SerializeToString(deterministic=True))
    _append(state, REVOCATION_COUNT, revocation_index_key, key.encode())


RULES = {"register_account": process_register_account,
         "revoke_certificate": process_revoke_certificate}
