"""Certificates an organisation's CA can issue at will: what a hostile member can forge with
its own CA key, a device's rotated key, a certificate with a chosen validity."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from gridledger_core.crypto import Signer
from gridledger_core.signing_identity import SigningIdentity


def issued_by(consortium_dir: Path, ca_org: str, name: str, role: str, *,
              not_before: int | None = None, not_after: int | None = None) -> SigningIdentity:
    """A fresh key with a certificate `CN=name, O=ca_org, OU=role` signed by `ca_org`'s real
    signing CA (so the chain verifies): exactly what that organisation can make by itself."""
    key = Ed25519PrivateKey.generate()
    der = certificate_for_key(consortium_dir, ca_org, name, role, key.public_key(),
                              not_before=not_before, not_after=not_after)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return SigningIdentity(name, Signer.from_pem(pem), der)


def certificate_for_key(consortium_dir: Path, ca_org: str, name: str, role: str,
                        public_key: Ed25519PublicKey, *, not_before: int | None = None,
                        not_after: int | None = None) -> bytes:
    """The DER certificate `CN=name, O=ca_org, OU=role` for any public key (the CA need not
    know its private key, and there may be none), signed by `ca_org`'s real signing CA."""
    org_dir = consortium_dir / "orgs" / ca_org
    ca_cert = x509.load_pem_x509_certificate((org_dir / "signing-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((org_dir / "signing-ca.key").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    start = (datetime.datetime.fromtimestamp(not_before, datetime.UTC) if not_before is not None
             else now - datetime.timedelta(days=30))
    end = (datetime.datetime.fromtimestamp(not_after, datetime.UTC) if not_after is not None
           else now + datetime.timedelta(days=365))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca_org),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, None))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER)
