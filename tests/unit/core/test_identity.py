"""Identities: every signature checked against a chain ending at a genesis root."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.identity import BadSignature, Role, UnknownSigner
from gridledger_core.signing_identity import SigningIdentity


def test_every_node_has_an_identity_with_its_role(consortium_dir: Path, genesis: Genesis) -> None:
    expected = {"orderer-1": Role.ORDERER, "endorser-1": Role.ENDORSER,
                "committer-2": Role.COMMITTER, "meter-3": Role.METER, "plant-1": Role.PLANT,
                "admin": Role.ADMIN}
    for name, role in expected.items():
        certificate = SigningIdentity.load(consortium_dir, name).certificate
        identity = genesis.membership.identify(certificate, int(time.time()), None)
        assert (identity.name, identity.role) == (name, role)


def test_genesis_names_orderers_orgs_and_initiator(genesis: Genesis) -> None:
    assert [o.id for o in genesis.orderers] == ["orderer-1", "orderer-2", "orderer-3", "orderer-4"]
    assert {o.org for o in genesis.orderers} == {"gridops", "utility"}
    assert genesis.initiating_organization == "gridops"
    assert len(genesis.hash) == 32


def test_seven_orderers(tmp_path: Path) -> None:
    create_consortium(tmp_path, default_topology(orderers=7))
    assert len(Genesis.load(tmp_path / "genesis.json").orderer_keys) == 7


def test_certificate_from_another_consortium_is_unknown(genesis: Genesis, tmp_path: Path) -> None:
    create_consortium(tmp_path, default_topology())
    stranger = SigningIdentity.load(tmp_path, "meter-1")
    with pytest.raises(UnknownSigner, match=r"not issued by the CA|does not verify"):
        genesis.membership.identify(stranger.certificate, int(time.time()), None)


def test_garbage_and_expired_certificates(consortium_dir: Path, genesis: Genesis) -> None:
    with pytest.raises(UnknownSigner, match="not valid DER"):
        genesis.membership.identify(b"not a certificate", int(time.time()), None)
    cert = SigningIdentity.load(consortium_dir, "meter-1").certificate
    later = int(time.time()) + 20 * 365 * 86400
    with pytest.raises(UnknownSigner, match="expired"):
        genesis.membership.identify(cert, later, None)


def test_verify_checks_signature_over_exact_bytes(consortium_dir: Path, genesis: Genesis) -> None:
    meter = SigningIdentity.load(consortium_dir, "meter-1")
    signature = meter.signer.sign(b"payload")
    now = int(time.time())
    assert genesis.membership.verify(meter.certificate, signature, b"payload",
                                     now).name == "meter-1"
    with pytest.raises(BadSignature):
        genesis.membership.verify(meter.certificate, signature, b"payload!", now)
