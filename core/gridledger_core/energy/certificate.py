"""Carbon certificates: built by the initiating organisation's issuer, checked by the ledger
when the coins are issued, and verified offline by anyone holding the consortium's genesis
file (its organisation roots) — `gridctl certificate verify`.

A certificate is a SignedEnvelope whose payload is a serialized CarbonCertificate; the
signature is over those exact bytes and nobody re-serialises them.
"""

from __future__ import annotations

import datetime

from google.protobuf.message import DecodeError

from gridledger.common.v1 import energy_pb2, envelope_pb2
from gridledger_core.crypto import verify_signature
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Identity, Role, UnknownSigner
from gridledger_core.signing_identity import SigningIdentity

CERTIFICATE_FORMAT = "gridledger/carbon-certificate/v1"
UINT64_MAX = 2**64 - 1


class CertificateInvalid(Exception):
    """A certificate that does not prove what it says; the message says why."""


def avoided_grams(delivered_wh: int, grams_per_kwh: int) -> int:
    """CO2 avoided by `delivered_wh` of renewable energy, grams (= coins), rounded down."""
    return delivered_wh * grams_per_kwh // 1000


def certificate_for(contract: energy_pb2.SupplyContractRecord, genesis: Genesis,
                    issued_at: float) -> energy_pb2.CarbonCertificate:
    """The certificate the ledger expects for an ended contract (CertificateInvalid when its
    coins do not fit the certificate's uint64 field)."""
    avoided = avoided_grams(contract.delivered_wh, genesis.carbon_grams_per_kwh)
    if avoided > UINT64_MAX:
        raise CertificateInvalid(f"{avoided} coins do not fit a uint64")
    cert = energy_pb2.CarbonCertificate(
        format=CERTIFICATE_FORMAT, consortium=genesis.consortium, genesis_hash=genesis.hash,
        issuer_organization=genesis.initiating_organization,
        contract_id=contract.contract_id, meter=contract.meter, plant=contract.plant,
        pv_panel_id=contract.pv_panel_id, delivered_wh=contract.delivered_wh,
        grams_per_kwh=genesis.carbon_grams_per_kwh,
        avoided_grams=avoided, trade_end_tx_id=contract.trade_end_tx_id)
    cert.issued_at.FromNanoseconds(int(issued_at * 1e9))
    return cert


def decode(payload: bytes) -> energy_pb2.CarbonCertificate:
    cert = energy_pb2.CarbonCertificate()
    try:
        cert.ParseFromString(payload)
    except DecodeError as exc:
        raise CertificateInvalid("payload is not a CarbonCertificate") from exc
    if cert.format != CERTIFICATE_FORMAT:
        raise CertificateInvalid(f"payload format is {cert.format!r}, not {CERTIFICATE_FORMAT}")
    return cert


def check_issuer(identity: Identity, genesis: Genesis) -> None:
    """Only the initiating organisation's issuer signs certificates and issues coins."""
    if identity.org != genesis.initiating_organization:
        raise CertificateInvalid(
            f"{identity.name} is of {identity.org}; only the initiating organisation "
            f"{genesis.initiating_organization} issues carbon coins and certificates")
    if identity.role != Role.ISSUER:
        raise CertificateInvalid(f"{identity.name} is a {identity.role}, not an issuer")


def verify(envelope: envelope_pb2.SignedEnvelope, genesis: Genesis,
           now: datetime.datetime | None = None) -> tuple[energy_pb2.CarbonCertificate, Identity]:
    """Offline verification: the signer chains to a root in the genesis file, belongs to the
    initiating organisation with the issuer role, signed these exact bytes, and the
    certificate names this consortium and genesis and has consistent numbers."""
    try:
        at = int((now or datetime.datetime.now(datetime.UTC)).timestamp())
        signer = genesis.membership.identify(envelope.signer_certificate, at, None)
    except UnknownSigner as exc:
        raise CertificateInvalid(f"signer does not chain to the consortium roots: {exc}") from exc
    check_issuer(signer, genesis)
    if not verify_signature(signer.public_key, envelope.signature, envelope.payload):
        raise CertificateInvalid(f"signature of {signer.name} does not verify over the payload")
    cert = decode(envelope.payload)
    if cert.consortium != genesis.consortium or cert.genesis_hash != genesis.hash:
        raise CertificateInvalid(
            f"certificate is for consortium {cert.consortium!r} with genesis "
            f"{cert.genesis_hash.hex()[:16]}, not this one ({genesis.consortium}, "
            f"{genesis.hash.hex()[:16]})")
    if cert.issuer_organization != signer.org:
        raise CertificateInvalid("issuer_organization is not the signer's organisation")
    if cert.avoided_grams != avoided_grams(cert.delivered_wh, cert.grams_per_kwh):
        raise CertificateInvalid("avoided_grams is not delivered_wh * grams_per_kwh / 1000")
    return cert, signer


def issue_body(issuer: SigningIdentity, contract: energy_pb2.SupplyContractRecord,
               genesis: Genesis, issued_at: float) -> energy_pb2.CarbonCoinIssue:
    """The coin issue for an ended contract, with its certificate signed by `issuer`."""
    cert = certificate_for(contract, genesis, issued_at)
    return energy_pb2.CarbonCoinIssue(
        contract_id=contract.contract_id, meter=contract.meter, coins=cert.avoided_grams,
        certificate=issuer.sign_envelope(cert.SerializeToString()))
