"""Certificates a hostile member can make with its own CA key: signed correctly, but with
subject bytes no well-behaved CA would write (a UTF8String that is not UTF-8, a PrintableString
with bytes outside its alphabet, ...). `cryptography` refuses to build such names, so a
certificate is built with a placeholder value and the placeholder is replaced in the DER
before the TBS part is signed again with the CA key (same length, so no DER length changes)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from gridledger.common.v1 import envelope_pb2, transaction_pb2
from gridledger_core.crypto import Signer, derive_tx_id, new_nonce

PLACEHOLDER_CN = "QQQQCNQQQQ"
PLACEHOLDER_O = "QQQQOQQQQ"
NON_UTF8 = b"\xff\xfe\xc3\x28"  # 0xff/0xfe never occur in UTF-8; c3 28 is a broken sequence


def org_ca(consortium_dir: Path, org: str) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """An organisation's signing CA certificate and key from a consortium directory."""
    org_dir = consortium_dir / "orgs" / org
    cert = x509.load_pem_x509_certificate((org_dir / "signing-ca.pem").read_bytes())
    key = serialization.load_pem_private_key((org_dir / "signing-ca.key").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return cert, key


def _resign(der: bytes, tbs: bytes, new_tbs: bytes, ca_key: Ed25519PrivateKey,
            old_signature: bytes) -> bytes:
    assert len(tbs) == len(new_tbs) and der.count(tbs) == 1
    signature = ca_key.sign(new_tbs)
    assert len(signature) == len(old_signature) and der.count(old_signature) == 1
    return der.replace(tbs, new_tbs).replace(old_signature, signature)


def hostile_certificate(consortium_dir: Path, org: str, role: str, *, cn: bytes | None = None,
                        o: bytes | None = None, key: Ed25519PrivateKey | None = None,
                        name: str = "mallory") -> tuple[bytes, Signer]:
    """A DER signing certificate issued and signed by `org`'s real signing CA whose CN and/or
    O value bytes are replaced by `cn` / `o` (each padded or cut to the placeholder's length).
    Returns the DER and a Signer for its key."""
    ca_cert, ca_key = org_ca(consortium_dir, org)
    key = key or Ed25519PrivateKey.generate()
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, PLACEHOLDER_CN if cn is not None else name,
                           _validate=False),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, PLACEHOLDER_O if o is not None else org),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
    ])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .sign(ca_key, None))
    der = cert.public_bytes(serialization.Encoding.DER)
    tbs = cert.tbs_certificate_bytes
    new_tbs = tbs
    for placeholder, value in ((PLACEHOLDER_CN, cn), (PLACEHOLDER_O, o)):
        if value is not None:
            raw = placeholder.encode()
            replacement = (value * len(raw))[:len(raw)]
            assert new_tbs.count(raw) == 1
            new_tbs = new_tbs.replace(raw, replacement)
    der = _resign(der, tbs, new_tbs, ca_key, cert.signature)
    return der, Signer(key)


def hostile_envelope(der: bytes, signer: Signer, field: str, body: object,
                     creator: str = "mallory") -> envelope_pb2.SignedEnvelope:
    """A transaction signed with the key of a hostile certificate (header consistent)."""
    nonce = new_nonce()
    tx = transaction_pb2.Transaction()
    tx.header.tx_id = derive_tx_id(nonce, der)
    tx.header.creator = creator
    tx.header.nonce = nonce
    tx.header.timestamp.FromNanoseconds(time.time_ns())
    getattr(tx, field).CopyFrom(body)
    payload = tx.SerializeToString()
    return envelope_pb2.SignedEnvelope(payload=payload, signature=signer.sign(payload),
                                       signer_certificate=der)
