"""Issue 13, item 1: a certificate counts only as a member of the organisation whose CA issued
it, in the role that organisation gave the account. Each scenario is what a hostile member can
do with its own signing CA key; all were committed VALID before accounts were bound."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from identity_helpers import certificate_for_key, issued_by
from ledger_helpers import ChainBuilder, endorsed, identity, past_interval, reading
from market_helpers import BUY, option, place, terms
from test_energy_rules import World, world  # noqa: F401 - the fixture, shared
from test_market_rules import ASK, Market, market  # noqa: F401 - the fixture, shared

from gridledger.common.v1 import block_pb2, energy_pb2, envelope_pb2, transaction_pb2
from gridledger_core.crypto import derive_tx_id, new_nonce
from gridledger_core.energy import certificate
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import check_for_ordering
from gridledger_core.ledger.errors import Code, TxInvalid, code_name
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore

VALID = Code.TX_VALIDATION_CODE_VALID
UNKNOWN_SIGNER = Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Ordering proofs are the consensus core's tests; these are about signers."""


class Chain:
    def __init__(self, genesis: Genesis, consortium_dir: Path) -> None:
        self.ledger = Ledger(MemoryStore(), genesis, accept_proof)
        self.blocks = ChainBuilder()
        self.endorser = identity(consortium_dir, "endorser-1")

    def commit(self, *envelopes: envelope_pb2.SignedEnvelope,
               endorser: SigningIdentity | None = None) -> list[tuple[str, str]]:
        result = self.ledger.commit(self.blocks.block(
            [endorsed(e, endorser or self.endorser) for e in envelopes],
            timestamp=time.time() + 1))
        return [(code_name(c), m) for c, m in zip(result.codes, result.messages, strict=True)]

    def state(self) -> list[tuple[bytes, bytes]]:
        return list(self.ledger.store.scan(schema.STATE))


@pytest.fixture()
def chain(genesis: Genesis, consortium_dir: Path) -> Chain:
    return Chain(genesis, consortium_dir)


def test_another_orgs_ca_cannot_sign_for_a_meter(chain: Chain, consortium_dir: Path) -> None:
    """Reported: solarco's CA issued CN=meter-1, O=solarco, OU=meter; its 999,999 Wh reading
    was committed as meter-1's (meter-1 belongs to community)."""
    forged = issued_by(consortium_dir, "solarco", "meter-1", "meter")
    start = past_interval()
    before = chain.state()
    [(code, message)] = chain.commit(forged.new_transaction(
        "meter_reading", reading("meter-1", start, produced=999_999, consumed=0)))
    assert code == "UNKNOWN_SIGNER", message
    assert "meter-1 is an account of community" in message and "solarco" in message
    assert chain.state() == before
    # The real meter-1 still posts that interval.
    real = identity(consortium_dir, "meter-1")
    assert chain.commit(real.new_transaction("meter_reading", reading("meter-1", start))) == [
        ("VALID", "")]


def test_another_orgs_ca_cannot_rewrite_a_plants_announcement(world: World,  # noqa: F811
                                                              energy_dir: Path) -> None:
    """Reported: with community's CA, CN=plant-1, O=community rewrote plant-1's announcement
    (price, panels, endpoint)."""
    forged = issued_by(energy_dir, "community", "plant-1", "plant")
    body = world.announce("plant-1", price=1_000)
    body.endpoint = "203.0.113.9:1"
    body.pv_panel_ids[:] = ["stolen-pv"]
    before = world.state()
    code, message, _ = world.submit(forged, "plant_announcement", body)
    assert code_name(code) == "UNKNOWN_SIGNER", message
    assert "plant-1 is an account of solarco" in message
    assert world.state() == before
    assert world.plant("plant-1").endpoint == "127.0.0.1:1"


def test_another_orgs_ca_cannot_sign_a_plants_terms(world: World,  # noqa: F811
                                                    energy_dir: Path) -> None:
    """The plant's terms signer is bound like a creator: community's CA cannot sell
    plant-1's energy to its own meter."""
    forged = issued_by(energy_dir, "community", "plant-1", "plant")
    terms_env = world.terms()
    signed = forged.sign_envelope(terms_env.payload)
    before = world.state()
    code, message, _ = world.submit(world.who("meter-1"), "supply_contract",
                                    energy_pb2.SupplyContract(plant_terms=signed))
    assert code_name(code) == "UNKNOWN_SIGNER", message
    assert message.startswith("plant terms signer unknown: plant-1 is an account of solarco")
    assert world.state() == before


@pytest.mark.parametrize("name", ["endorser-c", "meter-2"])
def test_a_ca_cannot_make_itself_an_endorser(chain: Chain, consortium_dir: Path,
                                             genesis: Genesis, name: str) -> None:
    """community's CA issues OU=endorser, for a new name or for one of its meters: its
    endorsements do not count, at the committers nor at the orderers."""
    rogue = issued_by(consortium_dir, "community", name, "endorser")
    meter = identity(consortium_dir, "meter-1")
    env = meter.new_transaction("meter_reading", reading("meter-1", past_interval()))
    [(code, message)] = chain.commit(env, endorser=rogue)
    assert code == "UNKNOWN_SIGNER", message
    expected = ("endorser-c is not an account of the consortium" if name == "endorser-c"
                else "meter-2 is an account of community with role meter; a certificate "
                     "naming it endorser")
    assert message.startswith("endorser unknown: ") and expected in message, message
    with pytest.raises(TxInvalid) as refused:
        check_for_ordering(endorsed(env, rogue), genesis.membership)
    assert refused.value.code == UNKNOWN_SIGNER and expected in refused.value.message


def test_a_forged_endorser_cannot_sign_an_option(market: Market,  # noqa: F811
                                                 consortium_dir: Path) -> None:
    """The option signer of a place_order is an endorser account: community's CA issuing
    OU=endorser cannot hand its meter a trade at a price of its choosing."""
    maker_id = market.rest_sell(3000)
    rogue = issued_by(consortium_dir, "community", "endorser-c", "endorser")
    env = option(rogue, terms("meter-2", BUY, ASK, 1000), [(maker_id, "meter-1", ASK, 1000)])
    before = market.state()
    [(code, message)] = market.commit(place(market.buyer, env))
    assert code_name(code) == "UNKNOWN_SIGNER", message
    assert message.startswith("option signer unknown: endorser-c is not an account"), message
    assert market.state() == before
    assert market.order(maker_id).remaining_wh == 3000


@pytest.mark.parametrize("ca_org, name, expected", [
    ("gridops", "issuer-2", "issuer-2 is not an account of the consortium"),
    ("gridops", "admin", "admin is an account of gridops with role admin; a certificate naming it "
                        "issuer"),
])
def test_a_ca_cannot_make_itself_an_issuer(world: World, energy_dir: Path,  # noqa: F811
                                           ca_org: str, name: str, expected: str) -> None:
    """The initiating organisation's CA cannot mint a second issuer (or make its admin one):
    the issuer role is bound to the identity the genesis names."""
    cid = world.fulfilled()
    rogue = issued_by(energy_dir, ca_org, name, "issuer")
    body = certificate.issue_body(rogue, world.record(cid), world.genesis, world.now)
    before = world.state()
    code, message, _ = world.submit(rogue, "carbon_coin_issue", body)
    assert code_name(code) == "UNKNOWN_SIGNER", message
    assert expected in message, message
    assert world.state() == before
    assert world.coins("meter-1") == 0
    # The genesis issuer still can.
    code, message, _ = world.issue(cid)
    assert code == VALID, message


def test_a_ca_cannot_certify_a_key_that_signs_everything(chain: Chain,
                                                         consortium_dir: Path) -> None:
    """community's CA certifies the identity point as its own meter-1's key. OpenSSL's
    Ed25519 check took one signature (R = identity, S = 0) for every message under that key,
    so anybody could then sign as meter-1 and meter-1 could disown what it signed; the
    reading below was committed VALID. The ledger's signature rule refuses small-order keys."""
    identity_point = bytes([1]) + bytes(31)
    der = certificate_for_key(consortium_dir, "community", "meter-1", "meter",
                              Ed25519PublicKey.from_public_bytes(identity_point))
    nonce = new_nonce()
    tx = transaction_pb2.Transaction()
    tx.header.tx_id = derive_tx_id(nonce, der)
    tx.header.creator, tx.header.nonce = "meter-1", nonce
    tx.header.timestamp.FromNanoseconds(time.time_ns())
    tx.meter_reading.CopyFrom(reading("meter-1", past_interval(), produced=999_999, consumed=0))
    payload = tx.SerializeToString()
    universal = envelope_pb2.SignedEnvelope(payload=payload, signature=identity_point + bytes(32),
                                            signer_certificate=der)
    before = chain.state()
    [(code, message)] = chain.commit(universal)
    assert code == "BAD_SIGNATURE", message
    assert chain.state() == before
