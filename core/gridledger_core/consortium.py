"""Creating a consortium: CAs, node and device certificates, TLS material, genesis file.

Layout of a consortium directory:

    genesis.json                     the genesis configuration (hash = SHA-256 of its bytes)
    tls-ca-bundle.pem                every organisation's TLS root, for clients and servers
    orgs/<org>/signing-ca.{pem,key}  Ed25519 CA for signing identities (keep offline in production)
    orgs/<org>/tls-ca.{pem,key}      ECDSA P-256 CA for TLS
    nodes/<name>/signing.{pem,key}   the node's or device's signing identity
    nodes/<name>/tls.{pem,key}       its TLS server/client certificate
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridledger_core.genesis import Limits, MarketParams, SettlementParams
from gridledger_core.identity import Role

VALIDITY = datetime.timedelta(days=3650)
# Certificates are valid from this long before they are made. The ledger judges a signature
# at its block's time, so a history committed with earlier block times (tests, a devnet
# backfill, a replay) stays valid; it gives no power over the future.
BACKDATE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class GenesisProfile:
    """The time and money parameters of a genesis (everything but who is in it).

    `standard` keeps realistic production figures (15-minute readings, hourly slots closing an
    hour ahead, an hour to submit a reading). `fast` is the devnet's demo market, where the
    whole cycle (order, trade, delivery, settlement) fits in a few minutes at any hour:
    30-second readings, 1-minute slots that close 30 s ahead and settle 30 s after they end.
    """

    name: str
    reading_interval_seconds: int
    submission_window_seconds: int
    market: MarketParams
    settlement: SettlementParams
    # Genesis money of every meter and plant account, and of the balancing account (which pays
    # surplus credits from it) and the treasury (which may pay coin redemptions), micro-units.
    device_allocation_micro: int = 0
    balancing_allocation_micro: int = 0


# Imbalance prices bracket the market's price band: a seller that does not deliver pays at
# least what it was paid (shortfall >= price_max), and producing beyond one's sales never
# earns more than selling it would have (surplus <= price_min).
STANDARD = GenesisProfile(
    "standard", reading_interval_seconds=900, submission_window_seconds=3600,
    market=MarketParams(),
    settlement=SettlementParams(shortfall_price_micro_per_kwh=MarketParams().price_max,
                                surplus_price_micro_per_kwh=MarketParams().price_min,
                                coin_redeem_value_micro=100),
    device_allocation_micro=1_000 * 1_000_000, balancing_allocation_micro=100_000 * 1_000_000)
_FAST_MARKET = MarketParams(slot_seconds=60, open_before_seconds=4 * 3600,
                            gate_closure_seconds=30, price_min=10_000, price_max=1_000_000,
                            price_tick=1_000, lot_wh=10)
FAST = GenesisProfile(
    "fast", reading_interval_seconds=30, submission_window_seconds=30, market=_FAST_MARKET,
    settlement=SettlementParams(shortfall_price_micro_per_kwh=_FAST_MARKET.price_max,
                                surplus_price_micro_per_kwh=_FAST_MARKET.price_min,
                                coin_redeem_value_micro=100, max_contract_seconds=3600),
    device_allocation_micro=1_000 * 1_000_000, balancing_allocation_micro=100_000 * 1_000_000)
# The benchmark's and the load tests' genesis: production timing, but readings are accepted
# for two years after their interval, because the load generators send pre-signed readings of
# past intervals (`gridctl.loadgen.distant_past`) at rates no live meter population of a
# 2-core devnet could produce. Never for a real network: it reopens the backfill that the
# submission window closes.
LOAD = replace(STANDARD, name="load", submission_window_seconds=730 * 86400)
PROFILES = {p.name: p for p in (STANDARD, FAST, LOAD)}

# The initiating organisation's money accounts in the devnet topology: the treasury funds
# accounts; the settlement agent's account signs SettleSlot and CloseContract (its key is
# online in the agent); the balancing account is the counterparty of every imbalance. The
# balancing account is a separate settlement-role account whose key no process holds, so the
# agent that must be online cannot move the imbalance money: the rules move it.
TREASURY_ACCOUNT = "treasury"
SETTLEMENT_ACCOUNT = "settlement"
BALANCING_ACCOUNT = "balancing"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: Role


@dataclass
class OrgSpec:
    name: str
    nodes: list[NodeSpec] = field(default_factory=list)


@dataclass
class Topology:
    consortium: str
    initiating_organization: str
    orgs: list[OrgSpec]

    def nodes(self) -> list[tuple[str, NodeSpec]]:
        return [(org.name, node) for org in self.orgs for node in org.nodes]

    def names(self, role: Role) -> list[str]:
        return [n.name for _, n in self.nodes() if n.role == role]


def default_topology(orderers: int = 4, meters: int = 3, plants: int = 2) -> Topology:
    """The devnet: a grid operator (initiating organisation), a utility, a prosumer community
    and a solar company. Orderers are split between the first two so no one org holds a quorum
    alone when n >= 4. Every organisation has an admin (gridops' is `admin`, the operators'
    CLI and TLS client identity; the others' `<org>-admin`): only an organisation's own admin
    registers its devices and revokes its certificates."""
    ops = OrgSpec("gridops", [NodeSpec("endorser-1", Role.ENDORSER),
                              NodeSpec("committer-1", Role.COMMITTER),
                              NodeSpec("admin", Role.ADMIN),
                              NodeSpec("issuer", Role.ISSUER),
                              NodeSpec(TREASURY_ACCOUNT, Role.TREASURY),
                              NodeSpec(SETTLEMENT_ACCOUNT, Role.SETTLEMENT),
                              NodeSpec(BALANCING_ACCOUNT, Role.SETTLEMENT)])
    utility = OrgSpec("utility", [NodeSpec("committer-2", Role.COMMITTER),
                                  NodeSpec("utility-admin", Role.ADMIN)])
    for i in range(1, orderers + 1):
        (ops if i % 2 else utility).nodes.append(NodeSpec(f"orderer-{i}", Role.ORDERER))
    community = OrgSpec("community", [NodeSpec(f"meter-{i}", Role.METER)
                                      for i in range(1, meters + 1)])
    community.nodes.append(NodeSpec("community-admin", Role.ADMIN))
    solar = OrgSpec("solarco", [NodeSpec(f"plant-{i}", Role.PLANT) for i in range(1, plants + 1)])
    solar.nodes.append(NodeSpec("solarco-admin", Role.ADMIN))
    return Topology("gridledger-devnet", "gridops", [ops, utility, community, solar])


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object,
             not_before: datetime.datetime | None = None,
             not_after: datetime.datetime | None = None) -> x509.CertificateBuilder:
    start = not_before or datetime.datetime.now(datetime.UTC) - BACKDATE
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(not_after or start + VALIDITY))


def _ca(cn: str, org: str, key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
        algorithm: hashes.HashAlgorithm | None) -> x509.Certificate:
    name = _name(cn, org)
    return (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, algorithm))


def tls_names(name: str, role: Role) -> list[str]:
    """DNS names a node's TLS certificate covers: loopback for the devnet, and the names the
    Kubernetes manifests give it (pod DNS under the role's headless Service, and the Service)."""
    service = f"gridledger-{role.value}"
    return ["localhost", name, service, f"{name}.{service}", f"*.{service}",
            f"{service}.gridledger.svc.cluster.local",
            f"*.{service}.gridledger.svc.cluster.local"]


def settlement_section(topology: Topology, profile: GenesisProfile) -> dict:
    """The genesis "settlement" section for `topology`: the profile's prices, the initiating
    organisation's balancing account (its settlement-role account named BALANCING_ACCOUNT,
    else its first settlement-role account; none: no settlement on this network) and genesis
    allocations for every meter and plant, the balancing account and the treasury."""
    own = [n for org in topology.orgs if org.name == topology.initiating_organization
           for n in org.nodes]
    settlers = [n.name for n in own if n.role == Role.SETTLEMENT]
    balancing = BALANCING_ACCOUNT if BALANCING_ACCOUNT in settlers else \
        (settlers[0] if settlers else "")
    allocations = {n.name: profile.device_allocation_micro for _, n in topology.nodes()
                   if n.role in (Role.METER, Role.PLANT)}
    for name in [balancing] + [n.name for n in own if n.role == Role.TREASURY]:
        if name:
            allocations[name] = profile.balancing_allocation_micro
    section = dict(profile.settlement.__dict__)
    section["balancing_account"] = balancing
    section["allocations"] = {k: v for k, v in sorted(
        allocations.items(), key=lambda kv: _natural_key(kv[0])) if v > 0}
    return section


def create_consortium(directory: Path, topology: Topology, *,
                      profile: GenesisProfile | str = STANDARD,
                      reading_interval_seconds: int | None = None,
                      market: MarketParams | None = None, carbon_grams_per_kwh: int = 400,
                      settlement: dict | None = None) -> Path:
    """Write a complete consortium to `directory` and return the genesis path. `profile`
    (or its name) gives the timing and money parameters; `reading_interval_seconds`,
    `market` and `settlement` (the whole genesis settlement section, see
    genesis.SettlementParams) override its figures."""
    if isinstance(profile, str):
        profile = PROFILES[profile]
    directory.mkdir(parents=True, exist_ok=True)
    orgs_doc = []
    orderers_doc = []
    accounts_doc = []
    for org in topology.orgs:
        org_dir = directory / "orgs" / org.name
        org_dir.mkdir(parents=True, exist_ok=True)
        ca_key = Ed25519PrivateKey.generate()
        ca_cert = _ca(f"{org.name}-signing-ca", org.name, ca_key, None)
        tls_key = ec.generate_private_key(ec.SECP256R1())
        tls_cert = _ca(f"{org.name}-tls-ca", org.name, tls_key, hashes.SHA256())
        _write(org_dir / "signing-ca.pem", _pem_cert(ca_cert))
        _write(org_dir / "signing-ca.key", _pem_key(ca_key), private=True)
        _write(org_dir / "tls-ca.pem", _pem_cert(tls_cert))
        _write(org_dir / "tls-ca.key", _pem_key(tls_key), private=True)
        orgs_doc.append({"name": org.name, "signing_root": _pem_cert(ca_cert).decode(),
                         "tls_root": _pem_cert(tls_cert).decode()})
        for node in org.nodes:
            node_dir = directory / "nodes" / node.name
            node_dir.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            cert = _signing_cert(ca_cert, ca_key, org.name, node.name, node.role, key)
            _write(node_dir / "signing.pem", _pem_cert(cert))
            _write(node_dir / "signing.key", _pem_key(key), private=True)
            tkey = ec.generate_private_key(ec.SECP256R1())
            tcert = _tls_cert(tls_cert, tls_key, org.name, node.name, node.role, tkey)
            _write(node_dir / "tls.pem", _pem_cert(tcert))
            _write(node_dir / "tls.key", _pem_key(tkey), private=True)
            accounts_doc.append({"name": node.name, "org": org.name, "role": node.role.value})
            if node.role == Role.ORDERER:
                orderers_doc.append({"id": node.name, "org": org.name,
                                     "certificate": _pem_cert(cert).decode(),
                                     "tls_certificate": _pem_cert(tcert).decode()})
    market = market or profile.market
    genesis = {
        "consortium": topology.consortium,
        "initiating_organization": topology.initiating_organization,
        "organizations": orgs_doc,
        "orderers": sorted(orderers_doc, key=lambda o: _natural_key(o["id"])),
        "readings": {"interval_seconds": reading_interval_seconds
                     or profile.reading_interval_seconds,
                     "max_interval_wh": 1_000_000, "max_clock_skew_seconds": 300,
                     "submission_window_seconds": profile.submission_window_seconds},
        "market": market.__dict__,
        "carbon": {"grams_per_kwh": carbon_grams_per_kwh},
        "limits": Limits().__dict__,
        "accounts": sorted(accounts_doc, key=lambda a: _natural_key(a["name"])),
        "settlement": settlement if settlement is not None
        else settlement_section(topology, profile),
    }
    genesis_path = directory / "genesis.json"
    _write(genesis_path, json.dumps(genesis, indent=2).encode())
    _write(directory / "tls-ca-bundle.pem", b"".join(o["tls_root"].encode() for o in orgs_doc))
    return genesis_path


def _signing_cert(ca_cert: x509.Certificate, ca_key: Ed25519PrivateKey, org: str, name: str,
                  role: Role, key: Ed25519PrivateKey,
                  not_before: datetime.datetime | None = None,
                  not_after: datetime.datetime | None = None) -> x509.Certificate:
    return (_builder(_name(name, org, role.value), ca_cert.subject, key.public_key(),
                     not_before, not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, None))


def _tls_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, org: str,
              name: str, role: Role, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in tls_names(name, role)]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return (_builder(_name(name, org, role.value), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))


def issue_tls_certificate(directory: Path, org: str, name: str, role: Role
                          ) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key and TLS certificate for `name` from `org`'s TLS CA in the
    consortium directory (the devnet's names, as `create_consortium` gives them). Returns
    (certificate PEM, key PEM); writes nothing."""
    org_dir = directory / "orgs" / org
    ca_cert = x509.load_pem_x509_certificate((org_dir / "tls-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((org_dir / "tls-ca.key").read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{org}'s TLS CA key is not ECDSA")
    key = ec.generate_private_key(ec.SECP256R1())
    return _pem_cert(_tls_cert(ca_cert, ca_key, org, name, role, key)), _pem_key(key)


def issue_signing_certificate(directory: Path, org: str, name: str, role: Role, *,
                              not_before: datetime.datetime | None = None,
                              not_after: datetime.datetime | None = None
                              ) -> tuple[bytes, bytes]:
    """A new Ed25519 key and a certificate for account `name` (CN = name, O = org, OU = role)
    issued by `org`'s signing CA in the consortium directory: a new device, or a rotated key
    (then revoke the old certificate). Returns (certificate PEM, key PEM); writes nothing.

    The CA signs whatever it is asked to: the ledger, not the CA, decides whether the
    certificate speaks for an account (genesis or ledger registration, same org and role)."""
    org_dir = directory / "orgs" / org
    ca_cert = x509.load_pem_x509_certificate((org_dir / "signing-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((org_dir / "signing-ca.key").read_bytes(), None)
    if not isinstance(ca_key, Ed25519PrivateKey):
        raise ValueError(f"{org}'s signing CA key is not Ed25519")
    key = Ed25519PrivateKey.generate()
    cert = _signing_cert(ca_cert, ca_key, org, name, role, key, not_before, not_after)
    return _pem_cert(cert), _pem_key(key)


def _natural_key(name: str) -> tuple[str, int]:
    prefix, _, number = name.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (name, 0)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


@dataclass(frozen=True)
class NodeMaterial:
    """Paths of one node's keys and certificates in a consortium directory."""

    directory: Path
    name: str

    @property
    def node_dir(self) -> Path:
        return self.directory / "nodes" / self.name

    @property
    def signing_cert(self) -> Path:
        return self.node_dir / "signing.pem"

    @property
    def signing_key(self) -> Path:
        return self.node_dir / "signing.key"

    @property
    def tls_cert(self) -> Path:
        return self.node_dir / "tls.pem"

    @property
    def tls_key(self) -> Path:
        return self.node_dir / "tls.key"

    @property
    def tls_bundle(self) -> Path:
        return self.directory / "tls-ca-bundle.pem"

    @property
    def genesis(self) -> Path:
        return self.directory / "genesis.json"
