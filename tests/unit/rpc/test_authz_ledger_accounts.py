"""Meters and plants registered on the ledger (`gridctl identity register`) are callers too:
a node holding a ledger lets the interceptor look them up there, over real mTLS with a real
ledger of the session consortium. The device is refused before its registration commits and
let in after (a refusal is not remembered); another organisation's CA still cannot speak for
it. The meter-agent's remote lookup (RemoteAccounts) remembers misses only for its TTL."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from authz_support import answering_server, channel_to

from gridledger.common.v1 import block_pb2, identity_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.consortium import issue_tls_certificate
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Account, Role
from gridledger_core.ledger.errors import code_name
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.backoff import retry_after_ms
from gridledger_core.rpc.peer_identity import (
    LOOKUP_RETRY_AFTER_MS,
    LookupUnavailable,
    PeerIdentities,
    PeerRefused,
    RemoteAccounts,
    ledger_lookup,
)
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.storage import MemoryStore
from tests.unit.core.ledger_helpers import ChainBuilder, endorsed, identity


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Ordering proofs are the consensus core's tests; these are about callers."""


class Registrar:
    """A real ledger of the session consortium, and admins registering devices on it."""

    def __init__(self, genesis: Genesis, consortium_dir: Path) -> None:
        self.dir = consortium_dir
        self.ledger = Ledger(MemoryStore(), genesis, accept_proof)
        self.blocks = ChainBuilder()
        self.endorser = identity(consortium_dir, "endorser-1")

    def register(self, admin: str, account: str, role: str = "meter") -> None:
        now = int(time.time())
        envelope = identity(self.dir, admin).new_transaction(
            "register_account", identity_pb2.RegisterAccount(account=account, role=role),
            timestamp=now - 1)
        block = self.blocks.block([endorsed(envelope, self.endorser)], timestamp=now)
        result = self.ledger.commit(block)
        assert [code_name(c) for c in result.codes] == ["VALID"], result.messages


def pem_of(consortium_dir: Path, tmp: Path, name: str) -> bytes:
    return tls_of(consortium_dir, tmp, "community", name, Role.METER).certificate.read_bytes()


def tls_of(consortium_dir: Path, tmp: Path, ca_org: str, name: str, role: Role) -> TlsFiles:
    cert, key = issue_tls_certificate(consortium_dir, ca_org, name, role)
    out = tmp / f"{ca_org}-{name}-{role.value}"
    out.mkdir()
    (out / "tls.pem").write_bytes(cert)
    (out / "tls.key").write_bytes(key)
    return TlsFiles(consortium_dir / "tls-ca-bundle.pem", out / "tls.pem", out / "tls.key")


@pytest.fixture()
def registrar(genesis: Genesis, consortium_dir: Path) -> Registrar:
    return Registrar(genesis, consortium_dir)


@pytest.fixture()
def server(genesis: Genesis, consortium_dir: Path, registrar: Registrar) -> Iterator[NodeServer]:
    node = answering_server(genesis, TlsFiles.for_node(consortium_dir, "endorser-1"),
                            account_lookup=ledger_lookup(registrar.ledger.get_state))
    yield node
    node.stop()


def submit(port: int, tls: TlsFiles) -> tuple[grpc.StatusCode, str]:
    with channel_to(port, tls) as channel:
        try:
            endorser_pb2_grpc.EndorserServiceStub(channel).SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_a_registered_meter_is_refused_before_its_registration_commits_and_let_in_after(
        server: NodeServer, registrar: Registrar, consortium_dir: Path, tmp_path: Path) -> None:
    meter = tls_of(consortium_dir, tmp_path, "community", "meter-70", Role.METER)
    code, why = submit(server.port, meter)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "meter-70 is not a genesis account of community with role meter, nor registered " \
           "on the ledger" in why
    registrar.register("community-admin", "meter-70")
    assert submit(server.port, meter) == (grpc.StatusCode.OK, "")
    # The same certificate, remembered as a registered meter, keeps getting in.
    assert submit(server.port, meter) == (grpc.StatusCode.OK, "")


@pytest.mark.parametrize("ca_org, name, role", [
    ("solarco", "meter-71", Role.METER),    # community's meter, solarco's TLS CA
    ("community", "meter-72", Role.METER),  # solarco's meter, community's TLS CA
    ("community", "meter-71", Role.PLANT),  # community's meter, certified as a plant
])
def test_another_organisation_cannot_speak_for_a_registered_device(
        server: NodeServer, registrar: Registrar, consortium_dir: Path, tmp_path: Path,
        ca_org: str, name: str, role: Role) -> None:
    registrar.register("community-admin", "meter-71")
    registrar.register("solarco-admin", "meter-72")
    code, why = submit(server.port, tls_of(consortium_dir, tmp_path, ca_org, name, role))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert f"{name} is not a genesis account of {ca_org} with role {role.value}" in why


def test_node_roles_are_never_looked_up(genesis: Genesis, consortium_dir: Path,
                                        tmp_path: Path) -> None:
    asked: list[str] = []

    def lookup(name: str) -> Account:
        asked.append(name)
        return Account(name, "community", Role.ENDORSER)

    identities = PeerIdentities(genesis, lookup)
    forged = tls_of(consortium_dir, tmp_path, "community", "endorser-9", Role.ENDORSER)
    with pytest.raises(PeerRefused, match="endorser-9 is not a genesis account"):
        identities.identify(forged.certificate.read_bytes())
    assert asked == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_remote_lookup_remembers_a_miss_only_for_its_ttl(
        registrar: Registrar, genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    reads: list[str] = []

    def get_state(key: str) -> bytes | None:
        reads.append(key)
        return registrar.ledger.get_state(key)

    clock = Clock()
    identities = PeerIdentities(genesis, RemoteAccounts(get_state, ttl=10.0, clock=clock))
    pem = pem_of(consortium_dir, tmp_path, "meter-73")
    for _ in range(3):
        with pytest.raises(PeerRefused, match="nor registered on the ledger"):
            identities.identify(pem)
    assert reads == ["account/meter-73"]  # one remote read for three refused calls
    registrar.register("community-admin", "meter-73")
    with pytest.raises(PeerRefused):
        identities.identify(pem)  # still within the TTL of the miss
    clock.now += 10.0
    assert identities.identify(pem).describe() == "meter-73 (meter of community)"
    identities.identify(pem)
    assert reads == ["account/meter-73"] * 2  # a registration is remembered for good


def test_a_failing_remote_lookup_refuses_for_now_with_the_reason_and_when_to_come_back(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    def unreachable(key: str) -> bytes | None:
        raise ConnectionError("committer unreachable")

    clock = Clock()
    identities = PeerIdentities(genesis, RemoteAccounts(unreachable, ttl=10.0, clock=clock))
    pem = pem_of(consortium_dir, tmp_path, "meter-74")
    with pytest.raises(LookupUnavailable,
                       match=r"could not be looked up.*committer unreachable") as first:
        identities.identify(pem)
    assert first.value.retry_after_ms == 10_000  # the failure is remembered for the TTL
    clock.now += 4.0
    with pytest.raises(LookupUnavailable) as again:
        identities.identify(pem)
    assert again.value.retry_after_ms == 6_000  # what is left of it
    # A hostile or corrupt value under account/<name> is no account either.
    garbage = PeerIdentities(genesis, RemoteAccounts(lambda key: b"\xff\x00junk", clock=Clock()))
    with pytest.raises(PeerRefused, match="nor registered on the ledger"):
        garbage.identify(pem)


def test_remote_lookups_out_at_once_are_bounded_and_a_busy_refusal_is_not_remembered(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    """The agent's own reads at its committer count against its own member's share there
    (rpc/call_shares.py): callers with ever new names must not make it spend that share."""
    release = threading.Event()
    reads: list[str] = []

    def slow(key: str) -> bytes | None:
        reads.append(key)
        release.wait(10)
        return None

    identities = PeerIdentities(genesis, RemoteAccounts(slow, clock=Clock(), concurrent=1))
    pem = pem_of(consortium_dir, tmp_path, "meter-75")

    def look_up() -> None:
        with contextlib.suppress(PeerRefused):
            identities.identify(pem)

    first = threading.Thread(target=look_up)
    first.start()
    for _ in range(100):
        if reads:
            break
        time.sleep(0.01)
    second = pem_of(consortium_dir, tmp_path, "meter-76")
    with pytest.raises(LookupUnavailable, match="cannot be looked up now") as busy:
        identities.identify(second)
    assert busy.value.retry_after_ms == LOOKUP_RETRY_AFTER_MS
    release.set()
    first.join(timeout=10)
    with pytest.raises(PeerRefused, match="nor registered on the ledger"):
        identities.identify(second)  # looked up now: the busy refusal was not remembered
    assert reads == ["account/meter-75", "account/meter-76"]


@pytest.mark.parametrize("kind", ["threads", "asyncio"])
def test_a_caller_whose_lookup_failed_is_told_to_come_back_not_refused_for_good(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path, kind: str) -> None:
    """A lookup that failed (the meter agent's committer unreachable, or its lookups busy)
    is no verdict on the caller: UNAVAILABLE with a retry hint, which clients retry, not
    PERMISSION_DENIED, which they take as final."""
    def unreachable(key: str) -> bytes | None:
        raise ConnectionError("committer unreachable")

    node = answering_server(genesis, TlsFiles.for_node(consortium_dir, "endorser-1"),
                            account_lookup=RemoteAccounts(unreachable, ttl=3.0), kind=kind)
    try:
        meter = tls_of(consortium_dir, tmp_path, "community", "meter-77", Role.METER)
        with channel_to(node.port, meter) as channel, pytest.raises(grpc.RpcError) as refused:
            endorser_pb2_grpc.EndorserServiceStub(channel).SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "meter-77 could not be looked up on the ledger" in \
            refused.value.details()  # type: ignore[attr-defined]
        assert 0 < retry_after_ms(refused.value) <= 3_000  # type: ignore[arg-type]
    finally:
        node.stop()
