"""Consortium identities: who signed something, checked against the genesis roots.

Every signing certificate is issued directly by its organisation's signing CA, whose
certificate is named in the genesis configuration. The subject carries the account id (CN),
the organisation (O) and the role (OU).
"""

from __future__ import annotations

import datetime
import enum
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
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


@dataclass(frozen=True)
class Identity:
    """A verified signer: its account id, organisation, role and raw Ed25519 public key."""

    name: str
    org: str
    role: Role
    public_key: bytes
    certificate: bytes  # DER


class UnknownSigner(Exception):
    """The certificate does not chain to a consortium root or is not usable."""


# Longest CN/O/OU accepted (X.520's upper bound for these attributes); the values
# end up in ledger keys and messages.
MAX_SUBJECT_VALUE = 64


def _subject_attr(subject: x509.Name, oid: x509.ObjectIdentifier) -> str:
    """One subject attribute as text. `subject` is already parsed (see `_verify`), so this
    only judges values: exactly one, text, short, no control characters."""
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

    def __init__(self, roots: dict[str, bytes]) -> None:
        """`roots` maps organisation name to its signing CA certificate (PEM)."""
        self._roots: dict[str, x509.Certificate] = {}
        for org, pem in roots.items():
            cert = x509.load_pem_x509_certificate(pem)
            if not isinstance(cert.public_key(), Ed25519PublicKey):
                raise ValueError(f"root of {org} is not an Ed25519 CA")
            self._roots[org] = cert
        # digest -> (identity, not_valid_before, not_valid_after)
        self._cache: dict[bytes, tuple[Identity, datetime.datetime, datetime.datetime]] = {}
        self._lock = threading.Lock()

    @property
    def organisations(self) -> list[str]:
        return sorted(self._roots)

    def identify(self, certificate_der: bytes, now: datetime.datetime | None = None) -> Identity:
        """The identity a DER certificate proves, or UnknownSigner with the reason."""
        now = now or datetime.datetime.now(datetime.UTC)
        digest = sha256(certificate_der)
        cached = self._cache.get(digest)
        if cached is None:
            cached = self._verify(certificate_der)
            with self._lock:
                self._cache[digest] = cached
        identity, not_before, not_after = cached
        if not not_before <= now <= not_after:
            raise UnknownSigner(f"certificate of {identity.name} is expired or not yet valid")
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
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # The library's text is left out: it may differ between versions, and the message
            # is recorded in blocks' commit records.
            raise UnknownSigner(f"certificate is not valid DER ({type(exc).__name__})") from exc
        org = _subject_attr(subject, NameOID.ORGANIZATION_NAME)
        root = self._roots.get(org)
        if root is None:
            raise UnknownSigner(f"organisation {org!r} is not a consortium member")
        if issuer != root.subject:
            raise UnknownSigner(f"certificate was not issued by the CA of {org}")
        root_key = root.public_key()
        assert isinstance(root_key, Ed25519PublicKey)
        try:
            root_key.verify(signature, tbs)
        except InvalidSignature as exc:
            raise UnknownSigner(
                f"certificate signature does not verify against {org}'s CA") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise UnknownSigner("signing certificates must carry an Ed25519 key")
        role_name = _subject_attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        try:
            role = Role(role_name)
        except ValueError as exc:
            raise UnknownSigner(f"unknown role {role_name!r} in certificate") from exc
        identity = Identity(
            name=_subject_attr(subject, NameOID.COMMON_NAME),
            org=org,
            role=role,
            public_key=key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
            certificate=der,
        )
        return identity, not_before, not_after

    def verify(self, certificate_der: bytes, signature: bytes, data: bytes) -> Identity:
        """Identify the signer and check its signature over `data`.

        Raises UnknownSigner or BadSignature.
        """
        identity = self.identify(certificate_der)
        if not verify_signature(identity.public_key, signature, data):
            raise BadSignature(f"signature of {identity.name} does not verify")
        return identity


class BadSignature(Exception):
    """A signature that does not verify over the exact signed bytes."""
