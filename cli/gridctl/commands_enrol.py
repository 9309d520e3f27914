"""Per-organisation enrolment: each organisation makes its own CAs and node keys, and only
certificates leave it.

    gridctl org init NAME --out DIR --node orderer-1:orderer --node committer-1:committer ...
        DIR/ca/{signing-ca,tls-ca}.{pem,key}   the organisation's CAs (keep ca/ offline)
        DIR/nodes/<name>/{signing,tls}.{pem,key} its nodes' identities
        DIR/org.json                            the public part: roots, accounts, orderers'
                                                signing and TLS certificates (no keys)
    gridctl genesis assemble --consortium C --initiating ORG --out OUT ORG.json ...
        OUT/genesis.json, OUT/tls-ca-bundle.pem from the organisations' org.json files only
        (--profile standard|fast: timing and prices; --balancing ACCOUNT: the initiating
        organisation's account that settles imbalances; --allocation NAME=MICRO: genesis money)

Each organisation then copies genesis.json and tls-ca-bundle.pem into its own DIR, which is
then a consortium directory for its own nodes (`--consortium-dir DIR`,
`k8s/consortium-secrets.sh DIR`), holding no other organisation's keys. `gridctl network
init` remains the one-step devnet path (every organisation in one directory).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridctl.output import emit, fail
from gridledger_core.consortium import (  # the devnet's certificate recipe, reused as is
    PROFILES,
    STANDARD,
    GenesisProfile,
    _builder,
    _ca,
    _name,
    _natural_key,
    _pem_cert,
    _pem_key,
    _write,
    tls_names,
)
from gridledger_core.genesis import Genesis, Limits
from gridledger_core.identity import Role

ORG_FILE = "org.json"


def init_org(directory: Path, org: str, nodes: list[tuple[str, Role]]) -> Path:
    """Write one organisation's CAs, node identities and public org.json; return its path."""
    ca_dir = directory / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_key = Ed25519PrivateKey.generate()
    ca_cert = _ca(f"{org}-signing-ca", org, ca_key, None)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = _ca(f"{org}-tls-ca", org, tls_key, hashes.SHA256())
    _write(ca_dir / "signing-ca.pem", _pem_cert(ca_cert))
    _write(ca_dir / "signing-ca.key", _pem_key(ca_key), private=True)
    _write(ca_dir / "tls-ca.pem", _pem_cert(tls_cert))
    _write(ca_dir / "tls-ca.key", _pem_key(tls_key), private=True)
    accounts, orderers = [], []
    for name, role in nodes:
        node_dir = directory / "nodes" / name
        node_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        cert = (_builder(_name(name, org, role.value), ca_cert.subject, key.public_key())
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, None))
        tkey = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in tls_names(name, role)]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        tcert = (_builder(_name(name, org, role.value), tls_cert.subject, tkey.public_key())
                 .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                 .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                       ExtendedKeyUsageOID.CLIENT_AUTH]),
                                critical=False)
                 .sign(tls_key, hashes.SHA256()))
        _write(node_dir / "signing.pem", _pem_cert(cert))
        _write(node_dir / "signing.key", _pem_key(key), private=True)
        _write(node_dir / "tls.pem", _pem_cert(tcert))
        _write(node_dir / "tls.key", _pem_key(tkey), private=True)
        accounts.append({"name": name, "role": role.value})
        if role == Role.ORDERER:
            orderers.append({"id": name, "certificate": _pem_cert(cert).decode(),
                             "tls_certificate": _pem_cert(tcert).decode()})
    public = {"name": org, "signing_root": _pem_cert(ca_cert).decode(),
              "tls_root": _pem_cert(tls_cert).decode(), "accounts": accounts,
              "orderers": orderers}
    path = directory / ORG_FILE
    _write(path, json.dumps(public, indent=2).encode())
    return path


class EnrolError(ValueError):
    """An organisation's public part is unusable; the message says which and why."""


def _check_issued(org: str, what: str, pem: str, root_pem: str, cn: str, role: Role) -> None:
    cert = x509.load_pem_x509_certificate(pem.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrolError(f"{what} of {cn} was not issued by {org}'s CA") from exc
    subject = {a.oid: a.value for a in cert.subject}
    if (subject.get(NameOID.COMMON_NAME), subject.get(NameOID.ORGANIZATION_NAME),
            subject.get(NameOID.ORGANIZATIONAL_UNIT_NAME)) != (cn, org, role.value):
        raise EnrolError(f"{what} of {cn} names {cert.subject.rfc4514_string()}, not "
                         f"CN={cn}, O={org}, OU={role.value}")


def assemble_genesis(out: Path, consortium: str, initiating: str, org_files: list[Path],
                     reading_interval_seconds: int | None = None,
                     carbon_grams_per_kwh: int = 400, *, profile: GenesisProfile = STANDARD,
                     balancing_account: str = "",
                     allocations: dict[str, int] | None = None) -> Path:
    """genesis.json and tls-ca-bundle.pem in `out` from the organisations' public parts, in
    the format `gridctl network init` writes (Genesis.parse checks it). The settlement
    section has `profile`'s prices, `balancing_account` (an account of the initiating
    organisation with the settlement or treasury role; "" = imbalances recorded, not priced)
    and `allocations` (account -> micro-units of genesis money)."""
    orgs_doc, orderers_doc, accounts_doc = [], [], []
    seen_accounts: set[str] = set()
    for path in org_files:
        doc = json.loads(path.read_text())
        org = doc["name"]
        if any(o["name"] == org for o in orgs_doc):
            raise EnrolError(f"organisation {org} is given twice")
        if "PRIVATE KEY" in path.read_text():
            raise EnrolError(f"{path} holds a private key; only org.json's certificates belong "
                             "in genesis")
        orgs_doc.append({"name": org, "signing_root": doc["signing_root"],
                         "tls_root": doc["tls_root"]})
        roles = {}
        for account in doc["accounts"]:
            name = account["name"]
            if name in seen_accounts:
                raise EnrolError(f"account {name} is claimed by more than one organisation")
            seen_accounts.add(name)
            roles[name] = Role(account["role"])
            accounts_doc.append({"name": name, "org": org, "role": roles[name].value})
        for orderer in doc["orderers"]:
            name = orderer["id"]
            if roles.get(name) != Role.ORDERER:
                raise EnrolError(f"orderer {name} is not an orderer account of {org}")
            _check_issued(org, "signing certificate", orderer["certificate"],
                          doc["signing_root"], name, Role.ORDERER)
            _check_issued(org, "TLS certificate", orderer["tls_certificate"], doc["tls_root"],
                          name, Role.ORDERER)
            orderers_doc.append({"id": name, "org": org, "certificate": orderer["certificate"],
                                 "tls_certificate": orderer["tls_certificate"]})
    if balancing_account and not any(
            a["name"] == balancing_account and a["org"] == initiating
            and a["role"] in (Role.SETTLEMENT.value, Role.TREASURY.value) for a in accounts_doc):
        raise EnrolError(f"the balancing account {balancing_account} is not a settlement or "
                         f"treasury account of the initiating organisation {initiating}")
    settlement = dict(profile.settlement.__dict__)
    settlement["balancing_account"] = balancing_account
    settlement["allocations"] = dict(allocations or {})
    genesis = {
        "consortium": consortium,
        "initiating_organization": initiating,
        "organizations": orgs_doc,
        "orderers": sorted(orderers_doc, key=lambda o: _natural_key(o["id"])),
        "readings": {"interval_seconds": reading_interval_seconds
                     or profile.reading_interval_seconds,
                     "max_interval_wh": 1_000_000, "max_clock_skew_seconds": 300,
                     "submission_window_seconds": profile.submission_window_seconds},
        "market": profile.market.__dict__,
        "carbon": {"grams_per_kwh": carbon_grams_per_kwh},
        "limits": Limits().__dict__,
        "accounts": sorted(accounts_doc, key=lambda a: _natural_key(a["name"])),
        "settlement": settlement,
    }
    raw = json.dumps(genesis, indent=2).encode()
    try:
        Genesis.parse(raw)
    except (ValueError, KeyError) as exc:
        raise EnrolError(f"the assembled genesis is not valid: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "genesis.json", raw)
    _write(out / "tls-ca-bundle.pem", b"".join(o["tls_root"].encode() for o in orgs_doc))
    return out / "genesis.json"


def _node(value: str) -> tuple[str, Role]:
    name, _, role = value.partition(":")
    try:
        return name, Role(role)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected NAME:ROLE with ROLE one of {', '.join(r.value for r in Role)}, got "
            f"{value!r}") from exc


def cmd_org_init(args: argparse.Namespace) -> None:
    if (args.out / ORG_FILE).exists() and not args.force:
        fail(f"an organisation already exists in {args.out} (use --force to replace it)")
    if not args.node:
        fail("name the organisation's nodes with --node NAME:ROLE (repeatable)")
    path = init_org(args.out, args.name, args.node)
    emit({"organization": args.name, "dir": str(args.out), "public": str(path),
          "nodes": [n for n, _ in args.node]}, args.json)


def _allocation(value: str) -> tuple[str, int]:
    name, _, amount = value.partition("=")
    if not name or not amount.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=MICRO_UNITS, got {value!r}")
    return name, int(amount)


def cmd_genesis_assemble(args: argparse.Namespace) -> None:
    try:
        genesis = assemble_genesis(args.out, args.consortium, args.initiating, args.org_files,
                                   profile=PROFILES[args.profile],
                                   balancing_account=args.balancing,
                                   allocations=dict(args.allocation))
    except (EnrolError, OSError, KeyError, ValueError) as exc:
        fail(f"cannot assemble genesis: {exc}")
    emit({"genesis": str(genesis), "tls_ca_bundle": str(args.out / "tls-ca-bundle.pem"),
          "organizations": len(args.org_files)}, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    org = sub.add_parser("org", help="per-organisation enrolment").add_subparsers(
        dest="action", required=True)
    init = org.add_parser("init", help="an organisation's own CAs, node keys and org.json")
    init.add_argument("name", help="the organisation's name")
    init.add_argument("--out", type=Path, required=True, help="directory to write")
    init.add_argument("--node", type=_node, action="append", default=[],
                      help="NAME:ROLE of one of its nodes or devices (repeatable)")
    init.add_argument("--force", action="store_true")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=cmd_org_init)
    genesis = sub.add_parser("genesis", help="genesis from organisations' public parts") \
        .add_subparsers(dest="action", required=True)
    assemble = genesis.add_parser("assemble", help="genesis.json and the TLS bundle from "
                                                   "org.json files")
    assemble.add_argument("org_files", nargs="+", type=Path, metavar="ORG.json")
    assemble.add_argument("--consortium", required=True, help="consortium name")
    assemble.add_argument("--initiating", required=True, help="initiating organisation")
    assemble.add_argument("--out", type=Path, required=True)
    assemble.add_argument("--profile", choices=sorted(PROFILES), default=STANDARD.name,
                          help="timing and prices (standard: production; fast: the demo's)")
    assemble.add_argument("--balancing", default="", metavar="ACCOUNT",
                          help="the initiating organisation's settlement (or treasury) "
                               "account that is the counterparty of every imbalance")
    assemble.add_argument("--allocation", type=_allocation, action="append", default=[],
                          metavar="NAME=MICRO", help="genesis money of an account, in "
                                                     "micro-units (repeatable)")
    assemble.add_argument("--json", action="store_true")
    assemble.set_defaults(func=cmd_genesis_assemble)
