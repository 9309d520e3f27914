"""Who is calling: the consortium account a TLS client certificate proves.

gRPC only checks that a client certificate chains to *some* root in the TLS bundle, so any
organisation's TLS CA could issue `O=<another org>, OU=orderer, CN=orderer-2`. Here a
certificate counts only when it was issued by the TLS CA of the organisation in its O, and
its CN is a genesis account of that organisation with the role in its OU. An orderer is
further pinned: only the exact TLS certificate genesis names for it proves it.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role

# Distinct client certificates a node remembers verdicts for; beyond it the cache restarts
# (a consortium has far fewer TLS identities, so this bounds memory, not the hit rate).
CACHE_LIMIT = 4096


class PeerRefused(Exception):
    """The certificate proves no consortium account; the message says why."""


@dataclass(frozen=True)
class Peer:
    """A verified TLS caller."""

    name: str
    org: str
    role: Role
    # The genesis orderer whose pinned TLS certificate this exactly is, else "".
    pinned_orderer: str = ""

    def describe(self) -> str:
        return f"{self.name} ({self.role.value} of {self.org})"


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise PeerRefused(f"client certificate subject must have exactly one {label}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def pem_fingerprint(pem: bytes) -> bytes:
    return fingerprint(x509.load_pem_x509_certificate(pem).public_bytes(
        serialization.Encoding.DER))


class PeerIdentities:
    """Verifies TLS client certificates against one genesis configuration (thread-safe)."""

    def __init__(self, genesis: Genesis) -> None:
        self._roots = {o.name: x509.load_pem_x509_certificate(o.tls_root_pem)
                       for o in genesis.organizations}
        self._accounts = genesis.accounts
        # Fingerprint of each orderer's pinned TLS certificate -> (orderer id, org).
        self._pins = {pem_fingerprint(o.tls_certificate_pem): (o.id, o.org)
                      for o in genesis.orderers if o.tls_certificate_pem}
        self._cache: dict[bytes, Peer | PeerRefused] = {}
        self._lock = threading.Lock()

    def identify(self, pem: bytes) -> Peer:
        """The account `pem` (the presented client certificate) proves, or PeerRefused."""
        key = hashlib.sha256(pem).digest()
        verdict = self._cache.get(key)
        if verdict is None:
            try:
                verdict = self._verify(pem)
            except PeerRefused as exc:
                verdict = exc
            with self._lock:
                if len(self._cache) >= CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = verdict
        if isinstance(verdict, PeerRefused):
            raise verdict
        return verdict

    def _verify(self, pem: bytes) -> Peer:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise PeerRefused(f"client certificate is not valid PEM: {exc}") from exc
        org = _attr(cert, NameOID.ORGANIZATION_NAME, "O")
        role_name = _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)")
        name = _attr(cert, NameOID.COMMON_NAME, "CN")
        root = self._roots.get(org)
        if root is None:
            raise PeerRefused(f"organisation {org!r} of {name} is not a consortium member")
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:  # ValueError: issuer name
            raise PeerRefused(f"client certificate of {name} (O={org}) was not issued by "
                              f"{org}'s TLS CA") from exc
        try:
            role = Role(role_name)
        except ValueError as exc:
            raise PeerRefused(f"unknown role {role_name!r} in client certificate of "
                              f"{name}") from exc
        account = self._accounts.get(name)
        if account is None or account.org != org or account.role != role:
            raise PeerRefused(f"{name} is not a genesis account of {org} with role "
                              f"{role.value}")
        pin = self._pins.get(fingerprint(cert.public_bytes(serialization.Encoding.DER)))
        pinned = pin[0] if pin is not None and pin == (name, org) else ""
        return Peer(name, org, role, pinned)
