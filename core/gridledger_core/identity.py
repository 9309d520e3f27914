"""Consortium identities: who signed something, checked against the genesis roots and the
accounts of the consortium.

Every signing certificate is issued directly by its organisation's signing CA, whose
certificate is named in the genesis configuration. The subject carries the account id (CN),
the organisation (O) and the role (OU).

As in Fabric's MSP, a certificate speaks only for an account of the organisation whose CA
issued it, in the role that organisation gave the account: every account belongs to exactly
one organisation (named in the genesis, or registered on the ledger by that organisation's
admin), and a certificate counts only if its O and OU are that organisation and that role.
Otherwise any organisation's CA could issue `CN=<someone else's meter>` or `OU=endorser`.
Validity is judged at a time the caller passes (a block's time on the ledger path, never the
node's clock), and revocations are read from the ledger's state.
"""

from __future__ import annotations

import datetime
import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from gridledger_core.crypto import sha256, verify_signature


class Role(enum.StrEnum):
    ORDERER = "orderer"
    ENDORSER = "endorser"
    COMMITTER = "committer"
    METER = "meter"
    PLANT = "plant"
    ADMIN = "admin"
    # Issues carbon coins and certificates; the ledger accepts it only from the genesis
    # initiating organisation (kept apart from admin, whose key operators use for the CLI).
    ISSUER = "issuer"
    # Settlement (issue 14), both only from the initiating organisation: the treasury funds
    # accounts (creates money); the settlement agent submits SettleSlot and closes contracts.
    TREASURY = "treasury"
    SETTLEMENT = "settlement"


@dataclass(frozen=True)
class Identity:
    """A verified signer: its account id, organisation, role and raw Ed25519 public key."""

    name: str
    org: str
    role: Role
    public_key: bytes
    certificate: bytes  # DER
    # SHA-256 of `certificate` and its serial number (lowercase hex): what revocations name.
    fingerprint: bytes = b""
    serial: str = ""


# Roles an organisation's admin may register on the ledger. Node roles are bound to the
# identities the genesis names: a CA cannot make itself an endorser, orderer or issuer.
LEDGER_ROLES = frozenset({Role.METER, Role.PLANT})


@dataclass(frozen=True)
class Account:
    """An account (node or device) and the one organisation and role it belongs to."""

    name: str
    org: str
    role: Role


class AccountBook(Protocol):
    """The ledger's accounts and revocations, read from the state at one point of the chain."""

    def registered(self, name: str) -> Account | None:
        """The account registered on the ledger under `name` (genesis accounts are not)."""
        ...

    def revoked_at(self, identity: Identity) -> int | None:
        """The height at which `identity`'s certificate was revoked, or None."""
        ...


class UnknownSigner(Exception):
    """The certificate does not chain to a consortium root or is not usable."""


# Longest CN/O/OU accepted (X.520's upper bound for these attributes); the values
# end up in ledger keys and messages.
MAX_SUBJECT_VALUE = 64


# Verified certificate chains kept per process (a device signs thousands of transactions
# with one certificate).
CHAIN_CACHE_LIMIT = 65_536


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def subject_attr(subject: x509.Name, oid: x509.ObjectIdentifier) -> str:
    """One subject attribute as text. `subject` is already parsed (see `_verify`), so this
    only judges values: exactly one, text, short, no control characters. The one rule for
    signing and TLS certificates alike (rpc/peer_identity.py)."""
    attrs = subject.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        raise UnknownSigner(f"certificate subject must have exactly one {oid._name}")
    value = attrs[0].value
    if not isinstance(value, str):
        raise UnknownSigner(f"certificate subject {oid._name} is not a text value")
    # Control characters are refused by code point, not by str.isprintable(), whose answer
    # depends on the Python version's Unicode tables: every node must reach the same verdict.
    # "/" separates the parts of ledger state keys (reading/<meter>/<start>, ...), so a name
    # holding one could reach into another account's key range.
    if not 0 < len(value) <= MAX_SUBJECT_VALUE or any(
            ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "/" for c in value):
        raise UnknownSigner(f"certificate subject {oid._name} must be 1 to "
                            f"{MAX_SUBJECT_VALUE} characters without control characters or '/'")
    return value


class Membership:
    """Verifies signing certificates against the organisations' root certificates.

    Results are cached by certificate digest: a device signs thousands of transactions with
    one certificate, and the chain check is the expensive part.
    """

    def __init__(self, roots: dict[str, bytes],
                 accounts: Mapping[str, Account] | None = None) -> None:
        """`roots` maps organisation name to its signing CA certificate (PEM); `accounts` are
        the genesis accounts (name -> Account)."""
        self._roots: dict[str, x509.Certificate] = {}
        for org, pem in roots.items():
            cert = x509.load_pem_x509_certificate(pem)
            if not isinstance(cert.public_key(), Ed25519PublicKey):
                raise ValueError(f"root of {org} is not an Ed25519 CA")
            self._roots[org] = cert
        self._accounts: dict[str, Account] = dict(accounts or {})
        # digest -> (identity, not valid before, not valid after; Unix seconds)
        self._cache: dict[bytes, tuple[Identity, int, int]] = {}
        self._lock = threading.Lock()

    @property
    def organisations(self) -> list[str]:
        return sorted(self._roots)

    @property
    def accounts(self) -> Mapping[str, Account]:
        """The genesis accounts."""
        return self._accounts

    def account(self, name: str, ledger: AccountBook | None) -> Account | None:
        """The account `name` (its organisation and role): in the genesis, else registered
        on the ledger (`ledger`: the state's accounts; None: the genesis only)."""
        account = self._accounts.get(name)
        if account is None and ledger is not None:
            account = ledger.registered(name)
        return account

    def certificate(self, certificate_der: bytes) -> Identity:
        """What a certificate says (CN, O, OU, key), checked only for its chain to the CA of
        the organisation it names: no validity time, no account binding. For tools and for
        naming a certificate to revoke; a signature is judged with `identify`."""
        return self._chain(certificate_der)[0]

    def _chain(self, der: bytes) -> tuple[Identity, int, int]:
        digest = sha256(der)
        cached = self._cache.get(digest)
        if cached is None:
            identity, not_before, not_after = self._verify(der)
            cached = (replace(identity, fingerprint=digest),
                      int(not_before.timestamp()), int(not_after.timestamp()))
            with self._lock:
                # Only certificates of member CAs get here, but a hostile member CA can mint
                # any number: start over at the bound (entries are recomputed identically).
                if len(self._cache) >= CHAIN_CACHE_LIMIT:
                    self._cache.clear()
                self._cache[digest] = cached
        return cached

    def identify(self, certificate_der: bytes, at: int | None,
                 ledger: AccountBook | None) -> Identity:
        """The identity a DER certificate proves, or UnknownSigner with the reason.

        `at` (Unix seconds) is when the signature is judged: the block's time on the ledger
        path, the endorser's clock at admission; None only for checks that must not depend
        on any clock (the orderers' admission: committers judge validity at block time).
        `ledger` is the state's accounts and revocations at the point of the chain being
        judged; None binds to the genesis accounts only (no registrations, no revocations).
        """
        identity, not_before, not_after = self._chain(certificate_der)
        if at is not None and not not_before <= at <= not_after:
            raise UnknownSigner(f"certificate of {identity.name} is expired or not yet valid at "
                                f"{at} (valid from {not_before} to {not_after})")
        account = self.account(identity.name, ledger)
        if account is None:
            raise UnknownSigner(f"{identity.name} is not an account of the consortium (neither "
                                "in the genesis nor registered on the ledger)")
        if account.org != identity.org:
            raise UnknownSigner(f"{identity.name} is an account of {account.org}; a certificate "
                                f"issued by {identity.org}'s CA does not speak for it")
        if account.role != identity.role:
            raise UnknownSigner(f"{identity.name} is an account of {account.org} with role "
                                f"{account.role}; a certificate naming it {identity.role} does "
                                "not count")
        if ledger is not None:
            height = ledger.revoked_at(identity)
            if height is not None:
                raise UnknownSigner(f"certificate of {identity.name} (serial {identity.serial}) "
                                    f"revoked at height {height}")
        return identity

    def _verify(self, der: bytes) -> tuple[Identity, datetime.datetime, datetime.datetime]:
        # `cryptography` parses a certificate lazily: loading checks only the outer DER, and
        # the subject, issuer, key and validity are decoded on first access, raising ValueError
        # (or UnsupportedAlgorithm for the key) for bytes a hostile CA can sign, such as a
        # UTF8String that is not UTF-8. Every field is therefore read here, once, inside one
        # guard, and anything it refuses becomes UnknownSigner: the same verdict on every node.
        try:
            cert = x509.load_der_x509_certificate(der)
            subject, issuer = cert.subject, cert.issuer
            key = cert.public_key()
            not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
            signature, tbs = cert.signature, cert.tbs_certificate_bytes
            serial = format(cert.serial_number, "x")
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
            # InvalidVersion (a version field other than v1/v3) is not a ValueError; it
            # escaped here until the commit fuzz flipped that byte of a certificate.
            # The library's text is left out: it may differ between versions, and the message
            # is recorded in blocks' commit records.
            raise UnknownSigner(f"certificate is not valid DER ({type(exc).__name__})") from exc
        org = subject_attr(subject, NameOID.ORGANIZATION_NAME)
        root = self._roots.get(org)
        if root is None:
            raise UnknownSigner(f"organisation {org!r} is not a consortium member")
        if issuer != root.subject:
            raise UnknownSigner(f"certificate was not issued by the CA of {org}")
        root_key = root.public_key()
        assert isinstance(root_key, Ed25519PublicKey)
        if not verify_signature(_raw(root_key), signature, tbs):
            raise UnknownSigner(f"certificate signature does not verify against {org}'s CA")
        if not isinstance(key, Ed25519PublicKey):
            raise UnknownSigner("signing certificates must carry an Ed25519 key")
        role_name = subject_attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        try:
            role = Role(role_name)
        except ValueError as exc:
            raise UnknownSigner(f"unknown role {role_name!r} in certificate") from exc
        identity = Identity(
            name=subject_attr(subject, NameOID.COMMON_NAME),
            org=org,
            role=role,
            public_key=_raw(key),
            certificate=der,
            serial=serial,
        )
        return identity, not_before, not_after

    def verify(self, certificate_der: bytes, signature: bytes, data: bytes, at: int) -> Identity:
        """Off-ledger check of a signed object (e.g. a meter-agent checking a plant's terms
        before it countersigns): the certificate's chain, its validity at `at` and the
        signature over `data`. It does not bind the account (which may be registered on the
        ledger): the ledger's rules do, with `identify`.

        Raises UnknownSigner or BadSignature.
        """
        identity, not_before, not_after = self._chain(certificate_der)
        if not not_before <= at <= not_after:
            raise UnknownSigner(f"certificate of {identity.name} is expired or not yet valid")
        if not verify_signature(identity.public_key, signature, data):
            raise BadSignature(f"signature of {identity.name} does not verify")
        return identity


@dataclass(frozen=True)
class Signers:
    """How signatures are judged at one point: the consortium's roots and genesis accounts,
    the ledger's registrations and revocations (`ledger`), and the time (`at`). The ledger
    builds one per block (the block's time, its state overlay), the endorser one per request
    (its clock, its replica's state); see `Membership.identify` for None."""

    membership: Membership
    at: int | None
    ledger: AccountBook | None

    def identify(self, certificate_der: bytes) -> Identity:
        return self.membership.identify(certificate_der, self.at, self.ledger)


class BadSignature(Exception):
    """A signature that does not verify over the exact signed bytes."""
