"""Per-organisation enrolment through the gridctl CLI: every organisation makes its own CAs
and keys (`gridctl org init`), genesis is assembled from the public parts only (`gridctl
genesis assemble`), and the result is a consortium the nodes' identity checks accept, with no
organisation holding another's keys."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from gridctl.main import main
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.rpc.peer_identity import PeerIdentities
from gridledger_core.signing_identity import SigningIdentity

ORGS = {
    "gridops": ["endorser-1:endorser", "committer-1:committer", "admin:admin", "issuer:issuer",
                "orderer-1:orderer", "orderer-3:orderer"],
    "utility": ["committer-2:committer", "orderer-2:orderer", "orderer-4:orderer"],
    "community": ["meter-1:meter", "meter-2:meter"],
    "solarco": ["plant-1:plant"],
}


def _init(root: Path, org: str, nodes: list[str]) -> Path:
    argv = ["org", "init", org, "--out", str(root / org), "--json"]
    for node in nodes:
        argv += ["--node", node]
    main(argv)
    return root / org


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("orgs")
    dirs = {org: _init(root, org, nodes) for org, nodes in ORGS.items()}
    # Only the public parts travel to whoever assembles genesis.
    shared = root / "shared"
    shared.mkdir()
    files = []
    for org, directory in dirs.items():
        files.append(shared / f"{org}.json")
        shutil.copy(directory / "org.json", files[-1])
    out = root / "genesis"
    main(["genesis", "assemble", "--consortium", "test", "--initiating", "gridops",
          "--out", str(out), *map(str, files)])
    for directory in dirs.values():  # each organisation copies the two public files in
        for name in ("genesis.json", "tls-ca-bundle.pem"):
            shutil.copy(out / name, directory / name)
    return out, dirs


def test_each_organisation_holds_only_its_own_keys(
        enrolled: tuple[Path, dict[str, Path]]) -> None:
    _, dirs = enrolled
    keys = {org: {p.read_bytes() for p in d.rglob("*.key")} for org, d in dirs.items()}
    for org, directory in dirs.items():
        own = {p.name for p in (directory / "nodes").iterdir()}
        assert own == {n.split(":")[0] for n in ORGS[org]}
        for other, other_keys in keys.items():
            if other != org:
                assert not keys[org] & other_keys
        assert "PRIVATE KEY" not in (directory / "org.json").read_text()


def test_assembled_genesis_names_every_org_account_and_pinned_orderer(
        enrolled: tuple[Path, dict[str, Path]]) -> None:
    out, dirs = enrolled
    genesis = Genesis.load(out / "genesis.json")
    assert {o.name for o in genesis.organizations} == set(ORGS)
    assert genesis.accounts["orderer-2"].org == "utility"
    assert genesis.accounts["meter-1"].role == Role.METER
    assert [o.id for o in genesis.orderers] == ["orderer-1", "orderer-2", "orderer-3",
                                                "orderer-4"]
    # The nodes' own checks accept the organisations' own material.
    identities = PeerIdentities(genesis)
    pinned = identities.identify((dirs["utility"] / "nodes/orderer-2/tls.pem").read_bytes())
    assert (pinned.name, pinned.org, pinned.pinned_orderer) == ("orderer-2", "utility",
                                                               "orderer-2")
    meter = identities.identify((dirs["community"] / "nodes/meter-1/tls.pem").read_bytes())
    assert (meter.role, meter.pinned_orderer) == (Role.METER, "")
    signer = SigningIdentity.load(dirs["community"], "meter-1")
    envelope = signer.sign_envelope(b"x")
    now = int(time.time())
    assert genesis.membership.verify(envelope.signer_certificate, envelope.signature,
                                     envelope.payload, now).org == "community"
    # ... and bound to its account: CN meter-1 is community's meter in the assembled genesis.
    assert genesis.membership.identify(envelope.signer_certificate, now, None).name == "meter-1"
    assert (out / "tls-ca-bundle.pem").read_text().count("BEGIN CERTIFICATE") == len(ORGS)


def test_assembly_refuses_a_claimed_account_or_foreign_orderer_certificate(
        enrolled: tuple[Path, dict[str, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, dirs = enrolled
    # A second organisation claiming meter-1.
    rogue = _init(tmp_path, "rogue", ["meter-1:meter", "orderer-9:orderer"])
    with pytest.raises(SystemExit):
        main(["genesis", "assemble", "--consortium", "t", "--initiating", "gridops",
              "--out", str(tmp_path / "g1"), str(dirs["community"] / "org.json"),
              str(rogue / "org.json")])
    assert not (tmp_path / "g1" / "genesis.json").exists()
    assert "meter-1 is claimed by more than one organisation" in capsys.readouterr().err
    # An organisation's orderer entry carrying a TLS certificate another CA issued.
    doc = json.loads((dirs["utility"] / "org.json").read_text())
    doc["orderers"][0]["tls_certificate"] = json.loads(
        (rogue / "org.json").read_text())["orderers"][0]["tls_certificate"]
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    with pytest.raises(SystemExit):
        main(["genesis", "assemble", "--consortium", "t", "--initiating", "utility",
              "--out", str(tmp_path / "g2"), str(forged)])
    assert not (tmp_path / "g2" / "genesis.json").exists()
    assert "TLS certificate of orderer-2 was not issued by utility's CA" in \
        capsys.readouterr().err
