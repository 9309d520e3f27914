"""Issue 13: accounts registered on the ledger by their organisation's admin, certificates
revoked by it, and certificate validity judged at block time (replays agree whatever the
wall clock says)."""

from __future__ import annotations

import datetime
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from identity_helpers import issued_by
from ledger_helpers import ChainBuilder, endorsed, identity, reading

from gridledger.common.v1 import block_pb2, envelope_pb2, identity_pb2
from gridledger_core import identity as identity_module
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import check_envelope
from gridledger_core.ledger.errors import Code, TxInvalid, code_name
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.rules.identity import (
    ACCOUNT_COUNT,
    REVOCATION_COUNT,
    account_index_key,
    revocation_index_key,
)
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore

INTERVAL = 900
T0 = (int(time.time()) // INTERVAL - 20) * INTERVAL  # block times start five hours ago


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Ordering proofs are the consensus core's tests; these are about signers."""


class Chain:
    """A ledger whose blocks are stamped one interval apart from `start` (block n at start +
    n * 900 + 1), each transaction signed just before its block."""

    def __init__(self, genesis: Genesis, consortium_dir: Path, start: int = T0) -> None:
        self.start = start
        self.dir = consortium_dir
        self.ledger = Ledger(MemoryStore(), genesis, accept_proof)
        self.blocks = ChainBuilder()
        self.endorser = identity(consortium_dir, "endorser-1")
        self.raw: list[block_pb2.Block] = []

    @property
    def now(self) -> int:
        return self.start + self.blocks.number * INTERVAL + 1

    def tx(self, signer: SigningIdentity, field: str, body: object) -> envelope_pb2.SignedEnvelope:
        return signer.new_transaction(field, body, timestamp=self.now - 1)  # type: ignore[arg-type]

    def reading(self, signer: SigningIdentity, account: str | None = None
                ) -> envelope_pb2.SignedEnvelope:
        start = self.now - 1 - INTERVAL
        return self.tx(signer, "meter_reading", reading(account or signer.name, start))

    def register(self, admin: str, account: str, role: str = "meter"
                 ) -> envelope_pb2.SignedEnvelope:
        return self.tx(identity(self.dir, admin), "register_account",
                       identity_pb2.RegisterAccount(account=account, role=role))

    def revoke(self, admin: str, certificate: bytes = b"", serial: str = ""
               ) -> envelope_pb2.SignedEnvelope:
        body = (identity_pb2.RevokeCertificate(certificate=certificate, reason="key rotated")
                if certificate else identity_pb2.RevokeCertificate(serial=serial))
        return self.tx(identity(self.dir, admin), "revoke_certificate", body)

    def commit(self, *envelopes: envelope_pb2.SignedEnvelope) -> list[tuple[str, str]]:
        block = self.blocks.block([endorsed(e, self.endorser) for e in envelopes],
                                  timestamp=self.now)
        self.raw.append(block)
        result = self.ledger.commit(block)
        return [(code_name(c), m) for c, m in zip(result.codes, result.messages, strict=True)]

    def state(self) -> list[tuple[bytes, bytes]]:
        return list(self.ledger.store.scan(schema.STATE))


@pytest.fixture()
def chain(genesis: Genesis, consortium_dir: Path) -> Chain:
    return Chain(genesis, consortium_dir)


OK = ("VALID", "")


# -- registration -----------------------------------------------------------------------------

def test_admin_registers_a_meter_of_its_own_organisation(chain: Chain,
                                                         consortium_dir: Path) -> None:
    device = issued_by(consortium_dir, "community", "meter-9", "meter")
    [(code, message)] = chain.commit(chain.reading(device))
    assert (code, "meter-9 is not an account of the consortium" in message) == (
        "UNKNOWN_SIGNER", True), message
    # Registered and used in one block: the reading after the registration counts.
    assert chain.commit(chain.register("community-admin", "meter-9"),
                        chain.reading(device)) == [OK, OK]
    record = identity_pb2.AccountRecord.FromString(chain.ledger.get_state("account/meter-9"))
    assert (record.organization, record.role, record.height) == ("community", "meter", 1)
    assert chain.ledger.get_state(ACCOUNT_COUNT) == (1).to_bytes(8, "big")
    assert chain.ledger.get_state(account_index_key(1)) == b"meter-9"
    # Another organisation's CA still cannot speak for it.
    forged = issued_by(consortium_dir, "solarco", "meter-9", "meter")
    [(code, message)] = chain.commit(chain.reading(forged))
    assert code == "UNKNOWN_SIGNER" and "meter-9 is an account of community" in message


@pytest.mark.parametrize("admin, account, role, code, text", [
    ("meter-1", "meter-9", "meter", "NOT_AUTHORIZED", "only an organisation's admin"),
    ("community-admin", "endorser-9", "endorser", "NOT_AUTHORIZED", "cannot be registered"),
    ("community-admin", "issuer-9", "issuer", "NOT_AUTHORIZED", "cannot be registered"),
    ("community-admin", "admin-9", "admin", "NOT_AUTHORIZED", "cannot be registered"),
    ("community-admin", "meter-1", "meter", "STATE_CONFLICT", "already exists: a meter of"),
    ("solarco-admin", "plant-1", "plant", "STATE_CONFLICT", "already exists"),
    ("community-admin", "a/b", "meter", "INVALID_BODY", "is not 1-64 characters"),
    ("community-admin", "", "meter", "INVALID_BODY", "is not 1-64 characters"),
])
def test_registration_refusals_change_nothing(chain: Chain, admin: str, account: str,
                                              role: str, code: str, text: str) -> None:
    before = chain.state()
    [(got, message)] = chain.commit(chain.register(admin, account, role))
    assert (got, text in message) == (code, True), message
    assert chain.state() == before


def test_a_name_is_registered_once_by_one_organisation(chain: Chain) -> None:
    assert chain.commit(chain.register("community-admin", "meter-9")) == [OK]
    [(code, message)] = chain.commit(chain.register("solarco-admin", "meter-9", "plant"))
    assert (code, "already exists: a meter of community" in message) == ("STATE_CONFLICT",
                                                                         True), message


# -- revocation -------------------------------------------------------------------------------

def test_revoked_meter_is_refused_from_the_revocation_on(chain: Chain, genesis: Genesis,
                                                         consortium_dir: Path) -> None:
    meter = identity(consortium_dir, "meter-1")
    # Same block: a reading before the revocation is valid, one after it is not.
    early = chain.reading(meter)
    revoke = chain.revoke("community-admin", certificate=meter.certificate)
    late = chain.tx(meter, "meter_reading", reading("meter-1", chain.now - 1 - 2 * INTERVAL))
    results = chain.commit(early, revoke, late)
    assert results[:2] == [OK, OK]
    assert results[2][0] == "UNKNOWN_SIGNER" and results[2][1].endswith(
        "revoked at height 0"), results[2]
    # Later blocks: refused by the committers, and by the endorser at admission.
    before = chain.state()
    [(code, message)] = chain.commit(chain.reading(meter))
    assert code == "UNKNOWN_SIGNER" and "revoked at height 0" in message, message
    assert chain.state() == before
    with pytest.raises(TxInvalid) as refused:
        check_envelope(chain.reading(meter), chain.ledger.signers(chain.now))
    assert refused.value.code == Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER
    # Key rotation: a new certificate for the same account from the same CA works.
    rotated = issued_by(consortium_dir, "community", "meter-1", "meter")
    assert chain.commit(chain.reading(rotated)) == [OK]
    record = identity_pb2.RevocationRecord.FromString(
        chain.ledger.get_state(chain.ledger.get_state(revocation_index_key(1)).decode()))
    assert (record.organization, record.account, record.height, record.revoked_by,
            record.reason) == ("community", "meter-1", 0, "community-admin", "key rotated")
    assert chain.ledger.get_state(REVOCATION_COUNT) == (1).to_bytes(8, "big")


def test_revocation_by_serial(chain: Chain, consortium_dir: Path, genesis: Genesis) -> None:
    device = issued_by(consortium_dir, "community", "meter-2", "meter")
    serial = genesis.membership.certificate(device.certificate).serial
    # Serial numbers are per CA: solarco revoking that number revokes only its own.
    assert chain.commit(chain.revoke("solarco-admin", serial=serial)) == [OK]
    assert chain.commit(chain.reading(device)) == [OK]
    assert chain.commit(chain.revoke("community-admin", serial=serial)) == [OK]
    [(code, message)] = chain.commit(chain.reading(device))
    assert code == "UNKNOWN_SIGNER" and "revoked at height 2" in message, message


def test_revoked_endorser_endorses_nothing(chain: Chain, consortium_dir: Path) -> None:
    endorser = identity(consortium_dir, "endorser-1")
    assert chain.commit(chain.revoke("admin", certificate=endorser.certificate)) == [OK]
    [(code, message)] = chain.commit(chain.reading(identity(consortium_dir, "meter-1")))
    assert code == "UNKNOWN_SIGNER" and message.startswith("endorser unknown: certificate of "
                                                           "endorser-1"), message


@pytest.mark.parametrize("case, code, text", [
    ("other_orgs_certificate", "NOT_AUTHORIZED", "revokes only solarco's certificates"),
    ("not_an_admin", "NOT_AUTHORIZED", "only an organisation's admin revokes"),
    ("garbage", "INVALID_BODY", "is not one of the consortium's"),
    ("bad_serial", "INVALID_BODY", "is not lowercase hex"),
    ("nothing", "INVALID_BODY", "name the certificate to revoke"),
    ("twice", "STATE_CONFLICT", "already revoked at height 0"),
])
def test_revocation_refusals_change_nothing(chain: Chain, consortium_dir: Path, case: str,
                                            code: str, text: str) -> None:
    meter = identity(consortium_dir, "meter-1")
    if case == "other_orgs_certificate":
        env = chain.revoke("solarco-admin", certificate=meter.certificate)
    elif case == "not_an_admin":
        env = chain.tx(meter, "revoke_certificate",
                       identity_pb2.RevokeCertificate(certificate=meter.certificate))
    elif case == "garbage":
        env = chain.revoke("community-admin", certificate=b"not a certificate")
    elif case == "bad_serial":
        env = chain.revoke("community-admin", serial="0x1F")
    elif case == "nothing":
        env = chain.tx(identity(consortium_dir, "community-admin"), "revoke_certificate",
                       identity_pb2.RevokeCertificate(reason="?"))
    else:
        assert chain.commit(chain.revoke("community-admin", certificate=meter.certificate)) == [
            OK]
        env = chain.revoke("community-admin", certificate=meter.certificate)
    before = chain.state()
    [(got, message)] = chain.commit(env)
    assert (got, text in message) == (code, True), message
    assert chain.state() == before


# -- validity at block time -------------------------------------------------------------------

@contextmanager
def wall_clock(seconds: float) -> Iterator[None]:
    """Make this process's wall clock read `seconds` (time.time and datetime.now as the
    identity module sees them), as on a committer that replays history later."""
    real_time, real_datetime = time.time, identity_module.datetime

    class _Datetime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
            return datetime.datetime.fromtimestamp(seconds, tz)

    fake = types.SimpleNamespace(datetime=_Datetime, UTC=datetime.UTC,
                                 timedelta=datetime.timedelta)
    time.time = lambda: seconds  # type: ignore[assignment]
    identity_module.datetime = fake  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time = real_time  # type: ignore[assignment]
        identity_module.datetime = real_datetime  # type: ignore[assignment]


def test_replay_after_a_certificate_expired_gives_the_same_state_root(
        genesis: Genesis, consortium_dir: Path) -> None:
    """A meter whose certificate expires between its readings' blocks and a later replay:
    a committer replaying the blocks after notAfter reaches the same codes and state root."""
    start = (int(time.time()) // INTERVAL + 1) * INTERVAL
    chain = Chain(genesis, consortium_dir, start)
    not_after = start + 2 * INTERVAL + 100  # valid for blocks 0-2, expired for block 3
    meter = issued_by(consortium_dir, "community", "meter-1", "meter", not_after=not_after)
    codes = []
    for _ in range(4):  # the original committer, each block as it comes
        with wall_clock(chain.now + 2):
            codes += chain.commit(chain.reading(meter))
    assert [c for c, _ in codes] == ["VALID", "VALID", "VALID", "UNKNOWN_SIGNER"], codes
    assert "expired or not yet valid" in codes[3][1]
    original = chain.ledger.chain.state_root
    later = Ledger(MemoryStore(), genesis, accept_proof)
    with wall_clock(not_after + 30 * 86400):  # a new committer, a month later
        replayed = [later.commit(block) for block in chain.raw]
    assert [code_name(r.codes[0]) for r in replayed] == [c for c, _ in codes]
    assert later.chain.state_root == original
