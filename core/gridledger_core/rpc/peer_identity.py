"""Who is calling: the consortium account a TLS client certificate proves.

gRPC only checks that a client certificate chains to *some* root in the TLS bundle, so any
organisation's TLS CA could issue `O=<another org>, OU=orderer, CN=orderer-2`. Here a
certificate counts only when it was issued by the TLS CA of the organisation in its O, and
its CN is an account of that organisation with the role in its OU. An orderer is further
pinned: only the exact TLS certificate genesis names for it proves it.

Accounts are the genesis accounts, plus, where the node is given an `AccountLookup`, the
meters and plants an organisation's admin registered on the ledger (`account/<name>`,
ledger/rules/identity.py). What the certificate itself proves (issuer, subject) is cached per
certificate; whether its CN is an account is asked again until the answer is yes, so a device
refused before its registration committed gets in once it has (registrations are permanent,
so a yes is cached). TLS certificates are not revoked on the ledger (`revoke_certificate`
revokes signing certificates); a stolen TLS key is handled by the TLS CA's expiry and by the
signer checks of whatever the caller submits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from google.protobuf.message import DecodeError

from gridledger.common.v1 import identity_pb2
from gridledger_core.crypto import sha256
from gridledger_core.genesis import Genesis
from gridledger_core.identity import LEDGER_ROLES, Account, Role, UnknownSigner, subject_attr
from gridledger_core.ledger.rules.identity import account_key

log = logging.getLogger(__name__)

# Distinct client certificates (and ledger accounts) a node remembers; beyond it a cache
# restarts (a consortium has far fewer TLS identities, so this bounds memory, not hit rates).
CACHE_LIMIT = 4096

# name -> the account registered on the ledger under it, or None. May raise (e.g. a remote
# lookup that failed): the caller is then refused, and asked about again next call.
AccountLookup = Callable[[str], Account | None]


class PeerRefused(Exception):
    """The certificate proves no consortium account; the message says why."""


# When a caller whose lookup failed for now should call again, unless the failure is
# remembered for longer (RemoteAccounts).
LOOKUP_RETRY_AFTER_MS = 200


class LookupUnavailable(PeerRefused):
    """The caller's account could not be looked up now (the lookup is busy or its source
    unreachable): no verdict on the caller, who may call again after `retry_after_ms`."""

    def __init__(self, message: str, retry_after_ms: int = LOOKUP_RETRY_AFTER_MS) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


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


def fingerprint(der: bytes) -> bytes:
    return sha256(der)


def pem_fingerprint(pem: bytes) -> bytes:
    return fingerprint(x509.load_pem_x509_certificate(pem).public_bytes(
        serialization.Encoding.DER))


K = TypeVar("K")
V = TypeVar("V")


def _bounded_put(cache: dict[K, V], key: K, value: V) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def parse_account(name: str, raw: bytes | None) -> Account | None:
    """The meter or plant an `account/<name>` state value registers, else None."""
    if raw is None:
        return None
    try:
        record = identity_pb2.AccountRecord.FromString(raw)
        role = Role(record.role)
    except (DecodeError, ValueError):  # ValueError: an unknown role
        return None
    if record.account != name or role not in LEDGER_ROLES:
        return None
    return Account(record.account, record.organization, role)


def ledger_lookup(get_state: Callable[[str], bytes | None]) -> AccountLookup:
    """An AccountLookup reading committed state (`Ledger.get_state` of a replica)."""
    return lambda name: parse_account(name, get_state(account_key(name)))


class RemoteAccounts:
    """An AccountLookup through another node's state (the meter-agent asks its committer):
    a miss or a failure is remembered for `ttl` seconds, so unknown callers cannot make this
    node call out once per RPC, and a registration is seen at most `ttl` after it commits.
    A failure is no verdict on the caller: it raises LookupUnavailable with the time left
    before the next try. At most `concurrent` lookups are out at once (beyond, a caller is
    refused for now, LookupUnavailable again, and nothing is remembered): the node's own
    calls to the committer count against its own member's share there
    (rpc/call_shares.py), and callers with ever new names must not spend that share."""

    def __init__(self, get_state: Callable[[str], bytes | None], ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, concurrent: int = 2) -> None:
        self._get_state = get_state
        self._ttl = ttl
        self._clock = clock
        self._misses: dict[str, tuple[float, str]] = {}  # name -> (until, why)
        self._lock = threading.Lock()
        self._out = threading.BoundedSemaphore(concurrent)

    def __call__(self, name: str) -> Account | None:
        now = self._clock()
        miss = self._misses.get(name)
        if miss is not None and now < miss[0]:
            if miss[1]:
                raise LookupUnavailable(miss[1], max(1, int((miss[0] - now) * 1000)))
            return None
        if not self._out.acquire(blocking=False):
            raise LookupUnavailable(f"{name} cannot be looked up now: this node is looking up "
                                    "other callers; call again")
        why = ""
        try:
            account = parse_account(name, self._get_state(account_key(name)))
        except Exception as exc:  # any failure of the remote read refuses, never crashes
            account, why = None, f"looking {name} up failed: {exc}"
            log.warning("%s", why)
        finally:
            self._out.release()
        if account is None:
            with self._lock:
                _bounded_put(self._misses, name, (now + self._ttl, why))
            if why:
                raise LookupUnavailable(why, int(self._ttl * 1000))
        return account


@dataclass(frozen=True)
class Subject:
    """What a certificate proves by itself: issued by the TLS CA of `org`, naming `name`
    in `role` (whether that is an account is judged per call)."""

    name: str
    org: str
    role: Role
    pinned_orderer: str


class PeerIdentities:
    """Verifies TLS client certificates against one genesis configuration and, given
    `lookup`, the meters and plants registered on the ledger (thread-safe)."""

    def __init__(self, genesis: Genesis, lookup: AccountLookup | None = None) -> None:
        self._roots = {o.name: x509.load_pem_x509_certificate(o.tls_root_pem)
                       for o in genesis.organizations}
        self._accounts = genesis.accounts
        self._lookup = lookup
        # Fingerprint of each orderer's pinned TLS certificate -> (orderer id, org).
        self._pins = {pem_fingerprint(o.tls_certificate_pem): (o.id, o.org)
                      for o in genesis.orderers if o.tls_certificate_pem}
        # A refusal is kept as its reason, never as the exception object: re-raising one
        # object grows its traceback on every call (a refused client calling in a loop).
        self._cache: dict[bytes, Subject | str] = {}
        self._registered: dict[str, Account] = {}  # ledger registrations seen (permanent)
        self._lock = threading.Lock()

    def identify(self, pem: bytes) -> Peer:
        """The account `pem` (the presented client certificate) proves, or PeerRefused."""
        return self.admit(self.subject(pem))

    def subject(self, pem: bytes) -> Subject:
        """What `pem` proves by itself (its organisation is the one whose TLS CA issued
        it), or PeerRefused; the account it names is not looked up yet (`admit`)."""
        key = sha256(pem)
        verdict = self._cache.get(key)
        if verdict is None:
            try:
                verdict = self._verify(pem)
            except PeerRefused as exc:
                verdict = str(exc)
            with self._lock:
                _bounded_put(self._cache, key, verdict)
        if isinstance(verdict, str):
            raise PeerRefused(verdict)
        return verdict

    def admit(self, subject: Subject) -> Peer:
        """The account `subject` names, looked up (on the ledger, where it must), or
        PeerRefused."""
        name, org, role = subject.name, subject.org, subject.role
        account = self._accounts.get(name)
        if account is None and self._lookup is not None and role in LEDGER_ROLES:
            account = self._registered.get(name)
            if account is None:
                try:
                    account = self._lookup(name)
                except Exception as exc:  # a failed lookup is no verdict on the caller
                    retry = (exc.retry_after_ms if isinstance(exc, LookupUnavailable)
                             else LOOKUP_RETRY_AFTER_MS)
                    raise LookupUnavailable(f"{name} could not be looked up on the ledger: "
                                            f"{exc}", retry) from exc
                if account is not None and account.role in LEDGER_ROLES:
                    with self._lock:
                        _bounded_put(self._registered, name, account)
        if account is None or account.org != org or account.role != role:
            nor = ", nor registered on the ledger as one" if self._lookup else ""
            raise PeerRefused(f"{name} is not a genesis account of {org} with role "
                              f"{role.value}{nor}")
        return Peer(name, org, role, subject.pinned_orderer)

    def _verify(self, pem: bytes) -> Subject:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion: not a ValueError
            raise PeerRefused(f"client certificate is not valid PEM: {exc}") from exc
        # The subject is decoded lazily and may not decode at all (a member CA can sign any
        # bytes): read it here, under the same value rules as signing certificates.
        try:
            subject = cert.subject
            org = subject_attr(subject, NameOID.ORGANIZATION_NAME)
            role_name = subject_attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
            name = subject_attr(subject, NameOID.COMMON_NAME)
        except UnknownSigner as exc:
            raise PeerRefused(f"client {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise PeerRefused(f"client certificate subject does not decode "
                              f"({type(exc).__name__})") from exc
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
        pin = self._pins.get(fingerprint(cert.public_bytes(serialization.Encoding.DER)))
        pinned = pin[0] if pin is not None and pin == (name, org) else ""
        return Subject(name, org, role, pinned)
