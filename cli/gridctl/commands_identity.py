"""gridctl's identity commands: `identity list|revoke|register|issue`.

Accounts belong to exactly one organisation (docs/architecture.md, "Identities"). `list` shows
the genesis accounts, the accounts registered on the ledger and the revoked certificates (read
from a committer by point lookups of the numbered indexes the ledger keeps). `revoke` and
`register` sign as an admin of the devnet consortium directory (by default the genesis admin of
the certificate's organisation, or `--as`), submit through an endorser and wait for the commit.
`issue` makes a new key and certificate from an organisation's signing CA in the consortium
directory: a new device, or a rotated key (then revoke the old certificate).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gridctl import commit_wait, connect, devnet
from gridctl.output import emit, fail
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import identity_pb2
from gridledger_core.consortium import issue_signing_certificate, issue_tls_certificate
from gridledger_core.genesis import Genesis
from gridledger_core.identity import LEDGER_ROLES, Role, UnknownSigner
from gridledger_core.ledger.rules import identity as keys
from gridledger_core.signing_identity import SigningIdentity

ACCOUNT_COLUMNS = ["account", "organization", "role", "source", "height"]
REVOCATION_COLUMNS = ["organization", "account", "serial", "fingerprint", "height",
                      "revoked_by", "reason"]


def load_certificate(path: Path) -> bytes:
    """A certificate file (PEM or DER) as DER."""
    data = path.read_bytes()
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        fail(f"{path} is not a PEM or DER certificate: {exc}")
        raise AssertionError from exc  # unreachable: fail exits
    return cert.public_bytes(serialization.Encoding.DER)


def _genesis(network: devnet.Network) -> Genesis:
    return Genesis.load(network.consortium_dir / "genesis.json")


def _admin(network: devnet.Network, genesis: Genesis, org: str, name: str | None
           ) -> SigningIdentity:
    """`name`, or the genesis admin of `org`; its keys from the consortium directory."""
    admins = genesis.admins(org)
    if name is None:
        if not admins:
            fail(f"{org} has no admin in the genesis; nobody can sign for it")
        name = admins[0]
    account = genesis.accounts.get(name)
    if account is None or account.role != Role.ADMIN:
        fail(f"{name!r} is not an admin account of the genesis")
    if not (network.consortium_dir / "nodes" / name).is_dir():
        fail(f"no keys of {name!r} in {network.consortium_dir}")
    return SigningIdentity.load(network.consortium_dir, name)


def _submit(args: argparse.Namespace, signer: SigningIdentity, field: str,
            body: Any) -> dict[str, Any]:
    """Submit (the same envelope again while the network is unavailable) and, unless
    --no-wait, wait for the commit (commit_wait.py: block, validation code, exit codes)."""
    _, channel, stub = connect.endorser(args.dir, args.endorser)
    envelope = signer.new_transaction(field, body)
    with channel:
        tx_id = commit_wait.submit(stub, envelope, args.wait_timeout)
    out: dict[str, Any] = {"tx_id": tx_id, "signed_by": signer.name}
    if not args.no_wait:
        committer_channel, committer = connect.committer(args.dir, args.node)
        with committer_channel:
            out |= commit_wait.wait_committed(committer, tx_id, args.wait_timeout)
    return out


def _finish(out: dict[str, Any], as_json: bool) -> None:
    emit(out, as_json)
    if not as_json:
        print(commit_wait.outcome_line(out))
    commit_wait.finish(out)


# -- commands ---------------------------------------------------------------------------------

def cmd_revoke(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    genesis = _genesis(network)
    if args.cert:
        der = load_certificate(args.cert)
        try:
            subject = genesis.membership.certificate(der)
        except UnknownSigner as exc:
            fail(f"{args.cert}: not a certificate of this consortium: {exc}")
            raise AssertionError from exc  # unreachable: fail exits
        org = subject.org
        body = identity_pb2.RevokeCertificate(certificate=der, reason=args.reason)
        target = {"account": subject.name, "organization": org, "serial": subject.serial,
                  "fingerprint": subject.fingerprint.hex()}
    else:
        if not args.org:
            fail("--serial needs --org (serial numbers are per organisation's CA)")
        org = args.org
        body = identity_pb2.RevokeCertificate(serial=args.serial.lower(), reason=args.reason)
        target = {"organization": org, "serial": args.serial.lower()}
    admin = _admin(network, genesis, org, args.as_admin)
    _finish(target | _submit(args, admin, "revoke_certificate", body), args.json)


def cmd_register(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    genesis = _genesis(network)
    admin = _admin(network, genesis, args.org, args.as_admin)
    body = identity_pb2.RegisterAccount(account=args.account, role=args.role)
    _finish({"account": args.account, "organization": args.org, "role": args.role}
            | _submit(args, admin, "register_account", body), args.json)


def _count(stub: Any, key: str) -> int:
    found = connect.call(stub.GetState, committer_pb2.GetStateRequest(key=key))
    return int.from_bytes(found.value, "big") if found.found else 0


def _get(stub: Any, key: str) -> bytes:
    found = connect.call(stub.GetState, committer_pb2.GetStateRequest(key=key))
    if not found.found:
        fail(f"the ledger's index names {key!r}, which is missing", 2)
    return found.value


def cmd_list(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    genesis = _genesis(network)
    accounts = [{"account": a.name, "organization": a.org, "role": a.role.value,
                 "source": "genesis", "height": ""} for a in genesis.accounts.values()]
    revocations = []
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        for n in range(1, _count(stub, keys.ACCOUNT_COUNT) + 1):
            name = _get(stub, keys.account_index_key(n)).decode()
            record = identity_pb2.AccountRecord.FromString(_get(stub, keys.account_key(name)))
            accounts.append({"account": record.account, "organization": record.organization,
                             "role": record.role, "source": "ledger",
                             "height": record.height})
        for n in range(1, _count(stub, keys.REVOCATION_COUNT) + 1):
            key = _get(stub, keys.revocation_index_key(n)).decode()
            r = identity_pb2.RevocationRecord.FromString(_get(stub, key))
            revocations.append({"organization": r.organization, "account": r.account,
                                "serial": r.serial, "fingerprint": r.fingerprint.hex(),
                                "height": r.height, "revoked_by": r.revoked_by,
                                "reason": r.reason})
    if args.org:
        accounts = [a for a in accounts if a["organization"] == args.org]
        revocations = [r for r in revocations if r["organization"] == args.org]
    if args.json:
        emit({"accounts": accounts, "revocations": revocations}, True)
        return
    emit(accounts, False, ACCOUNT_COLUMNS)
    print()
    if revocations:
        emit(revocations, False, REVOCATION_COLUMNS)
    else:
        print("no revoked certificates")


def _replace(node_dir: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> None:
    """Write <stem>.{pem,key}, keeping the previous pair as <stem>.{pem,key}.old."""
    for suffix in ("pem", "key"):
        path = node_dir / f"{stem}.{suffix}"
        if path.exists():
            path.replace(node_dir / f"{stem}.{suffix}.old")
    (node_dir / f"{stem}.pem").write_bytes(cert_pem)
    key_path = node_dir / f"{stem}.key"
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)


def cmd_issue(args: argparse.Namespace) -> None:
    """Write a new signing key and certificate, and a new TLS pair, for an account to
    <consortium>/nodes/<account>/ (the previous ones, if any, kept as *.old: the old signing
    certificate is what `identity revoke --cert` then names)."""
    consortium = args.consortium_dir or connect.load_network(args.dir).consortium_dir
    role = Role(args.role)
    cert_pem, key_pem = issue_signing_certificate(consortium, args.org, args.account, role)
    node_dir = consortium / "nodes" / args.account
    node_dir.mkdir(parents=True, exist_ok=True)
    _replace(node_dir, "signing", cert_pem, key_pem)
    _replace(node_dir, "tls", *issue_tls_certificate(consortium, args.org, args.account, role))
    cert = x509.load_pem_x509_certificate(cert_pem)
    emit({"account": args.account, "organization": args.org, "role": args.role,
          "serial": format(cert.serial_number, "x"), "certificate": str(node_dir / "signing.pem"),
          "previous": str(node_dir / "signing.pem.old")
          if (node_dir / "signing.pem.old").exists() else ""}, args.json)


# -- parser -----------------------------------------------------------------------------------

def register(sub: Any) -> None:
    """Add the identity commands to gridctl's subcommands."""
    common = connect.common_flags()
    common.add_argument("--endorser", help="endorser to submit to (default: the first)")
    signing = argparse.ArgumentParser(add_help=False)
    signing.add_argument("--as", dest="as_admin", metavar="ADMIN",
                         help="sign as this admin (default: the genesis admin of the "
                              "organisation)")
    commit_wait.add_flags(signing)

    ident = sub.add_parser("identity", help="accounts and certificates").add_subparsers(
        dest="action", required=True)
    listing = ident.add_parser("list", parents=[common],
                               help="accounts (genesis and ledger) and revoked certificates")
    listing.add_argument("--org", help="only this organisation")
    listing.set_defaults(func=cmd_list)

    revoke = ident.add_parser("revoke", parents=[common, signing],
                              help="revoke a certificate of the admin's organisation")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--cert", type=Path, help="the certificate file (PEM or DER)")
    target.add_argument("--serial", help="its serial number (hex); needs --org")
    revoke.add_argument("--org", help="organisation whose CA issued the serial")
    revoke.add_argument("--reason", default="", help="free text, at most 256 characters")
    revoke.set_defaults(func=cmd_revoke)

    reg = ident.add_parser("register", parents=[common, signing],
                           help="register a meter or plant of an organisation on the ledger")
    reg.add_argument("account")
    reg.add_argument("--org", required=True)
    reg.add_argument("--role", required=True, choices=sorted(r.value for r in LEDGER_ROLES))
    reg.set_defaults(func=cmd_register)

    issue = ident.add_parser("issue", parents=[common],
                             help="new key + certificate from an organisation's signing CA")
    issue.add_argument("account")
    issue.add_argument("--org", required=True)
    issue.add_argument("--role", required=True, choices=sorted(r.value for r in Role))
    issue.add_argument("--consortium-dir", type=Path,
                       help="default: the consortium of the devnet in --dir")
    issue.set_defaults(func=cmd_issue)
