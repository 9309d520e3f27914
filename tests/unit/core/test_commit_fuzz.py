"""Fuzzing the commit path (issue 13, item 2).

A byzantine endorser (its own key, its organisation's CA) and a byzantine primary (orders
anything: duplicates, garbage, truncations, oversized bytes) feed real final blocks, signed
with the consortium's orderer keys, to two committers and an endorser's replica on LMDB.
Transactions are generated property-based from the protobuf descriptors of the envelope and
every body message, with integer extremes (0, 2^32, 2^63, 2^64-1, int64 limits), hostile
certificate subjects (arbitrary bytes in CN/O/OU, re-signed by a real CA), mutated DER,
payloads mutated at the byte level and re-signed, broken endorsement proofs, account
registrations and certificate revocations. Some are kept well-formed enough to reach every
rule, so the state grows (readings, plants, contracts, orders, accounts) and later
transactions meet it.

Identities count only as accounts of their organisation (identity.py): the byzantine member's
meters and plant are registered on the ledger by its admin in block 0, so its devices reach
the contract and market rules; the endorser it mints cannot be registered (node roles are the
genesis's) and its endorsements meet the binding on every path.

Every run starts from the same two blocks: block 0 registers those devices, block 1 holds one
valid transaction of each money body (fund_account, transfer, settle_slot), which every replica
must commit VALID. The random draws reach those bodies' valid cases only now and then, so
without block 1 nothing would show that a valid one commits alike everywhere.

Properties: every replica commits every block with the same codes, messages and state root;
no transaction's verdict comes from the ledger's catch-all (that would be an unfound root
cause); the orderers' admission check and the endorser's simulation raise only TxInvalid; a
VALID transaction's creator and endorsers are accounts of their certificates' organisations
in their roles, and devices registered on the ledger do get VALID transactions; and a fresh
replay of the whole chain (`gridctl ledger verify`'s code path) agrees."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from hostile_certs import hostile_certificate
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from ledger_helpers import INTERVAL, identity
from signed_blocks import Replicas

from gridledger.common.v1 import (
    energy_pb2,
    envelope_pb2,
    identity_pb2,
    market_pb2,
    settlement_pb2,
    transaction_pb2,
)
from gridledger_core.crypto import Signer, derive_tx_id
from gridledger_core.energy import certificate
from gridledger_core.energy.terms import TERMS_FORMAT, contract_id
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Account
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import check_endorsed_transaction, check_for_ordering
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.ledger import CommitResult
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.identity import LedgerAccounts
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.signing_identity import SigningIdentity

MIN_TRANSACTIONS = 1000
# GRIDLEDGER_FUZZ_BLOCKS runs a longer campaign (e.g. 1000) by hand; `make test` runs 60.
BLOCKS = int(os.environ.get("GRIDLEDGER_FUZZ_BLOCKS", "60"))
BLOCK_SIZE = (17, 30)  # 60 blocks x at least 17 = 1,020 transactions at least

UINT64 = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
INT64 = [-(2**63), -1, 0, 1, 2**31, 2**32, 2**63 - 1]
UINT32 = [0, 1, 2**31, 2**32 - 1]
INT32 = [-(2**31), -1, 0, 1, 2**31 - 1]
NAMES = ["meter-1", "meter-2", "meter-3", "plant-1", "plant-2", "issuer", "endorser-1",
         "mallory", "", "plant-1-pv-1", "pv", "treasury", "settlement"]
# treasury and settlement: the initiating organisation's money roles (tests/conftest.py).
HONEST = ["meter-1", "meter-2", "meter-3", "plant-1", "plant-2", "issuer", "endorser-1",
          "admin", "treasury", "settlement"]
# Where plausible fundings and transfers go: the meters and plants (funded in the test genesis),
# and the settlement account and the treasury (no genesis money: the balancing account is
# `balancing`, tests/conftest.py), which hold money once funded.
MONEY_HOLDERS = ["meter-1", "meter-2", "meter-3", "plant-1", "plant-2", "settlement", "treasury"]
F = FieldDescriptor
# The bodies each kind of creator may submit (by name without its number): most transactions
# get one of these, so they pass authorisation and meet the rules' arithmetic.
FITTING_BODIES = {
    "meter-": ("meter_reading", "supply_contract", "trade_end", "place_order", "cancel_order",
               "history_readings", "close_contract", "cancel_contract", "redeem_coins",
               "transfer"),
    "plant-": ("meter_reading", "plant_announcement", "history_readings", "close_contract"),
    "byz-meter": ("meter_reading", "supply_contract", "place_order"),
    "byz-meter-": ("meter_reading", "supply_contract", "trade_end", "place_order",
                   "cancel_order"),
    "byz-plant": ("meter_reading", "plant_announcement"),
    "issuer": ("carbon_coin_issue",),
    "admin": ("register_account", "revoke_certificate"),
    "treasury": ("fund_account", "transfer"),
    "settlement": ("settle_slot", "close_contract", "transfer"),
}


class World:
    """The replicas plus what the generators draw on: identities, and ids seen so far."""

    def __init__(self, genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
        self.genesis = genesis
        self.dir = consortium_dir
        self.replicas = Replicas(genesis, consortium_dir, tmp_path)
        self.ids = {name: identity(consortium_dir, name) for name in HONEST}
        self.endorser = self.ids["endorser-1"]
        self.names = list(NAMES)  # grows with tx ids, contract ids, option ids
        self.raw_seen: list[bytes] = []
        self.transactions = 0
        self.codes: dict[str, int] = {}
        self.valid_by_registered = 0  # VALID transactions created by ledger-registered accounts
        self.valid_bodies: dict[str, int] = {}  # VALID transactions by body type
        self.now = int(time.time())
        self._counter = 0
        self.strategies: dict[tuple[Any, int], st.SearchStrategy[Any]] = {}
        # Minted by the byzantine member's own CA (gridops): well-formed; its meters and plant
        # become accounts of gridops in block 0 (`register_minted`), its endorser never can.
        self.minted = {role: self._minted(role, f"byz-{role}")
                       for role in ("meter", "plant", "endorser")}
        # More meters than the consortium's three: a meter holds one open contract at a time,
        # and the contract rules' arithmetic is only reached by a meter without one.
        self.minted_meters = [self._minted("meter", f"byz-meter-{i}") for i in range(16)]

    def _minted(self, role: str, name: str) -> SigningIdentity:
        der, signer = hostile_certificate(self.dir, "gridops", role, name=name)
        return SigningIdentity(name, signer, der)

    def register_minted(self) -> None:
        """Block 0: gridops' admin registers the devices its CA minted, as any organisation
        registers its meters and plants; every replica must accept all of them."""
        admin = self.ids["admin"]
        devices = [self.minted["meter"], self.minted["plant"], *self.minted_meters]
        txs = []
        for device in devices:
            role = "plant" if device is self.minted["plant"] else "meter"
            env = admin.new_transaction("register_account", identity_pb2.RegisterAccount(
                account=device.name, role=role), timestamp=self.now - 1)
            txs.append(envelope_pb2.EndorsedTransaction(
                envelope=env, endorsements=[self.endorser.endorse(env)]).SerializeToString())
        result = self.replicas.commit(txs)
        assert result.codes == [Code.TX_VALIDATION_CODE_VALID] * len(txs), result.messages
        self.raw_seen.extend(txs)

    def unique(self) -> bytes:
        """8 bytes never returned before: hypothesis repeats simple draws (a nonce of zeros)
        often, and the duplicate-id rule would otherwise judge most transactions."""
        self._counter += 1
        return self._counter.to_bytes(8, "big")

    def remember(self, name: str) -> None:
        if name and name not in self.names:
            self.names.append(name)
            del self.names[: max(0, len(self.names) - 200)]


# -- generic messages from descriptors --------------------------------------------------------

def _scalar(field: FieldDescriptor, world: World) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return st.one_of(st.sampled_from(UINT64), st.integers(0, 2**64 - 1),
                         st.integers(0, 100_000))
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(INT64), st.integers(-(2**63), 2**63 - 1),
                         st.integers(-10 * 86_400, 86_400).map(lambda d: world.now + d))
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return st.one_of(st.sampled_from([*UINT32, INTERVAL]), st.integers(0, 2**32 - 1))
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return st.sampled_from(INT32)
    if t == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [7, -1])
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return st.one_of(known_name(world),
                         st.text(st.characters(exclude_categories=("Cs",)), max_size=12))
    if t == F.TYPE_BYTES:
        return st.binary(max_size=48)
    raise AssertionError(f"unhandled field type {t}")


def message(cls: Any, world: World, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any message of type `cls`: each field set or not, extremes likely, nested to depth 3.
    Strategies are made once per (type, depth): building them is most of hypothesis's cost."""
    key = (cls, depth)
    if key not in world.strategies:
        world.strategies[key] = _message(cls, world, depth)
    return world.strategies[key]


@st.composite
def _message(draw: st.DrawFn, cls: Any, world: World, depth: int) -> Any:
    msg = cls()
    descriptor = cls.DESCRIPTOR
    chosen = {o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]]))
              for o in descriptor.oneofs}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] != field.name:
            continue
        if oneof is None and not draw(st.booleans()):
            continue
        if field.type == F.TYPE_MESSAGE:
            if depth >= 3:
                continue
            sub = message_factory.GetMessageClass(field.message_type)
            if field.is_repeated:
                for value in draw(st.lists(message(sub, world, depth + 1), max_size=3)):
                    getattr(msg, field.name).add().CopyFrom(value)
            else:
                getattr(msg, field.name).CopyFrom(draw(message(sub, world, depth + 1)))
        elif field.is_repeated:
            getattr(msg, field.name).extend(draw(st.lists(_scalar(field, world), max_size=3)))
        else:
            setattr(msg, field.name, draw(_scalar(field, world)))
    return msg


def weighted(draw: st.DrawFn, options: list[tuple[Any, int]]) -> Any:
    """One of `options` by weight. Hypothesis's own choices lean towards simple values (the
    first element, 0), which would make most transactions the same kind; the mix is drawn
    from a Random seeded by hypothesis instead, still reproducible from the example."""
    rnd = draw(st.randoms(use_true_random=True))
    return rnd.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def known_name(world: World) -> st.SearchStrategy[str]:
    """A name or id seen so far. Strategies draw indices, never sizes that depend on the
    world, so hypothesis sees the same draws for the same choices (its consistency check)."""
    return st.integers(0, 2**16).map(lambda i: world.names[i % len(world.names)])


def mutate_bytes(draw: st.DrawFn, raw: bytes) -> bytes:
    """Truncate, flip a byte, insert or append garbage."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "append"]))
    at = draw(st.integers(0, 2**20)) % max(1, len(raw))
    xor = draw(st.integers(1, 255))
    garbage = draw(st.binary(min_size=1, max_size=16))
    if kind == "truncate":
        return raw[:at]
    if kind == "flip" and raw:
        return raw[:at] + bytes([raw[at] ^ xor]) + raw[at + 1:]
    return raw[:at] + garbage + raw[at:] if kind == "insert" else raw + garbage


# -- signers ----------------------------------------------------------------------------------

@st.composite
def signer(draw: st.DrawFn, world: World) -> tuple[str, Signer, bytes]:
    """(name, key, certificate DER): honest identities, identities the byzantine CA minted,
    certificates with arbitrary subject bytes re-signed by a real CA, and mutated DER."""
    kind = weighted(draw, [("honest", 65), ("minted", 5), ("minted_meter", 20),
                           ("hostile_subject", 5), ("mutated_der", 5)])
    if kind == "honest":
        ident = world.ids[draw(st.sampled_from(HONEST))]
        return ident.name, ident.signer, ident.certificate
    if kind == "minted_meter":
        ident = world.minted_meters[draw(st.integers(0, 2**16)) % len(world.minted_meters)]
        return ident.name, ident.signer, ident.certificate
    if kind == "minted":
        ident = world.minted[draw(st.sampled_from(sorted(world.minted)))]
        return ident.name, ident.signer, ident.certificate
    if kind == "hostile_subject":
        org = draw(st.sampled_from(world.genesis.membership.organisations))
        role = draw(st.sampled_from(["meter", "plant", "endorser", "issuer", "x"]))
        subject = draw(st.fixed_dictionaries({}, optional={
            "cn": st.binary(min_size=1, max_size=10), "o": st.binary(min_size=1, max_size=9)}))
        der, key = hostile_certificate(world.dir, org, role, **subject)
        return "mallory", key, der
    ident = world.ids[draw(st.sampled_from(HONEST))]
    return ident.name, ident.signer, mutate_bytes(draw, ident.certificate)


# -- bodies that reach the rules --------------------------------------------------------------

def _signed(ident: SigningIdentity, payload: bytes) -> envelope_pb2.SignedEnvelope:
    return ident.sign_envelope(payload)


@st.composite
def body(draw: st.DrawFn, world: World, creator: str) -> tuple[str, Any]:
    """A body of any type: fully fuzzed, or fuzzed with the fields that gate the rules set to
    plausible values (own account, aligned interval, nested envelopes signed by the right
    role), so the rules' arithmetic is reached with extreme numbers."""
    fitting = FITTING_BODIES.get(creator.rstrip("0123456789"), ())
    field = weighted(draw, [(f, w * (6 if f in fitting else 1)) for f, w in (
        ("meter_reading", 3), ("plant_announcement", 2), ("supply_contract", 3),
        ("trade_end", 1), ("carbon_coin_issue", 1), ("place_order", 2), ("cancel_order", 1),
        ("register_account", 1), ("revoke_certificate", 1), ("history_readings", 1),
        ("close_contract", 1), ("cancel_contract", 1), ("redeem_coins", 1),
        ("fund_account", 1), ("transfer", 1), ("settle_slot", 1))])
    cls = type(getattr(transaction_pb2.Transaction(), field))
    value = draw(message(cls, world))
    rnd = draw(st.randoms(use_true_random=True))
    # Hypothesis leans towards the first element of a choice: the plausible case comes first.
    if weighted(draw, [("fuzzed", 1), ("plausible", 4)]) == "fuzzed":
        return field, value
    if field == "meter_reading":
        value.meter = creator
        value.interval_seconds = INTERVAL
        # Mostly inside the readings submission window (older ones are refused).
        back = rnd.randint(1, 4) if rnd.random() < 0.8 else rnd.randint(1, 96 * 8)
        value.interval_start = (world.now // INTERVAL - back) * INTERVAL
        if rnd.random() < 0.7:
            value.produced_wh = rnd.randint(0, world.genesis.max_interval_wh)
            value.consumed_wh = rnd.randint(0, world.genesis.max_interval_wh)
    elif field == "plant_announcement":
        value.plant = creator
        value.price_micro_per_kwh = rnd.randint(0, world.genesis.market.price_max)
        del value.pv_panel_ids[:]
        value.pv_panel_ids.append("pv")
        del value.shortfall_windows[:]
        raw = world.replicas.ledgers[0].get_state(f"plant/{creator}")
        contracted = energy_pb2.PlantRecord.FromString(raw).contracted_wh if raw else 0
        value.contracted_wh = weighted(draw, [(contracted, 8), *[(v, 1) for v in UINT64]])
        value.remaining_wh = weighted(draw, [(value.remaining_wh, 2), (2**64 - 1, 3), (2**63, 1),
                                             (rnd.randint(0, 2**64 - 1), 1),
                                             (rnd.randint(1, 10**6), 3)])
    elif field == "supply_contract":
        terms = draw(message(energy_pb2.SupplyContractTerms, world))
        terms.format = TERMS_FORMAT
        terms.meter = creator
        terms.plant = rnd.choice(["plant-1", "plant-2"])
        terms.pv_panel_id = "pv"
        terms.nonce = draw(st.binary(min_size=8, max_size=8)) + world.unique()
        terms.expires_at = world.now + 600
        terms.deliver_by = world.now + rnd.randint(3600, 86400)
        if rnd.random() < 0.7:
            terms.coins_paid = 0
        terms.energy_wh = weighted(draw, [(terms.energy_wh, 2), (rnd.randint(1, 10_000), 4),
                                          (2**63, 2), (2**64 - 1, 1),
                                          (rnd.randint(1, 2**64 - 1), 1)])
        if rnd.random() < 0.5:
            terms.price_micro_per_kwh = rnd.randint(0, 1_000_000)
        plant = weighted(draw, [(world.ids[terms.plant], 9), (world.minted["plant"], 1)])
        value.plant_terms.CopyFrom(_signed(plant, terms.SerializeToString()))
        world.remember(contract_id(value.plant_terms.payload))
    elif field == "trade_end":
        value.contract_id = draw(known_name(world))
    elif field == "carbon_coin_issue":
        cert = draw(message(energy_pb2.CarbonCertificate, world))
        cert.format = certificate.CERTIFICATE_FORMAT
        value.certificate.CopyFrom(_signed(world.ids["issuer"], cert.SerializeToString()))
    elif field == "place_order":
        option = draw(message(market_pb2.TradeOption, world))
        option.endorser = "endorser-1"
        option.terms.meter = creator
        option.expires_at = world.now + 60
        world.remember(option.option_id)
        endorser = weighted(draw, [(world.endorser, 9), (world.minted["endorser"], 1)])
        value.option.CopyFrom(_signed(endorser, option.SerializeToString()))
    elif field == "cancel_order":
        value.order_id = draw(known_name(world))
    elif field == "history_readings":
        for entry in value.readings:
            entry.interval_start = (world.now // INTERVAL - rnd.randint(1, 96 * 8)) * INTERVAL
    elif field in ("close_contract", "cancel_contract"):
        value.contract_id = draw(known_name(world))
    elif field == "fund_account":
        value.account = weighted(draw, [(rnd.choice(MONEY_HOLDERS), 6),
                                        (draw(known_name(world)), 1)])
        value.amount_micro = weighted(draw, [(rnd.randint(1, 10**9), 4), (value.amount_micro, 1),
                                             *[(v, 1) for v in UINT64]])
    elif field == "transfer":
        value.to = weighted(draw, [(rnd.choice(MONEY_HOLDERS), 6), (draw(known_name(world)), 1)])
        value.amount_micro = weighted(draw, [(rnd.randint(1, 10**6), 4), (value.amount_micro, 1),
                                             *[(v, 1) for v in UINT64]])
    elif field == "settle_slot":
        # Past slots mostly (after their readings deadline or not yet), some not aligned.
        slot = world.genesis.market.slot_seconds
        value.slot_start = weighted(draw, [
            ((world.now // slot - rnd.randint(1, 48)) * slot, 6),
            ((world.now // slot + rnd.randint(0, 2)) * slot, 1),
            (value.slot_start, 1), (rnd.randint(-(2**63), 2**63 - 1), 1)])
    elif field == "redeem_coins":
        value.coins = rnd.choice([value.coins, rnd.randint(1, 1000)])
    elif field == "register_account":
        # New names mostly (so registrations reach the state), taken ones and bad roles too.
        value.account = weighted(draw, [(f"byz-new-{world.unique().hex()}", 6),
                                        (draw(known_name(world)), 1), (value.account, 1)])
        value.role = weighted(draw, [("meter", 4), ("plant", 2), ("endorser", 1),
                                     (value.role, 1)])
        world.remember(value.account)
    elif field == "revoke_certificate":
        # Never a certificate the fuzz depends on (the endorser's, the admin's, the issuer's):
        # a spare one of gridops, another organisation's, the byzantine `byz-meter`, a serial.
        target = weighted(draw, [("spare", 4), ("foreign", 1), ("byz_meter", 1), ("serial", 2)])
        if target == "serial":
            value.serial = format(rnd.randint(0, 2**64), "x")
        else:
            value.certificate = (
                hostile_certificate(world.dir, "gridops", "meter", name="byz-spare")[0]
                if target == "spare" else world.ids["meter-1"].certificate
                if target == "foreign" else world.minted["meter"].certificate)
    return field, value


# -- whole transactions -----------------------------------------------------------------------

@st.composite
def transaction(draw: st.DrawFn, world: World) -> bytes:
    """An endorsed transaction as a byzantine endorser could send, or bytes a byzantine
    primary could put in a block."""
    kind = weighted(draw, [("endorsed", 85), ("duplicate", 4), ("garbage", 3),
                           ("mutated_raw", 4), ("fuzzed_envelope", 3), ("oversized", 1)])
    if kind == "duplicate":
        index = draw(st.integers(0, 2**16))
        return world.raw_seen[index % len(world.raw_seen)] if world.raw_seen else b""
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    if kind == "oversized":
        return bytes(world.genesis.limits.max_tx_bytes + draw(st.integers(1, 64)))
    if kind == "fuzzed_envelope":
        return draw(message(envelope_pb2.EndorsedTransaction, world)).SerializeToString()
    name, key, der = draw(signer(world))
    tx = transaction_pb2.Transaction()
    field, value = draw(body(world, name))
    getattr(tx, field).CopyFrom(value)
    header = draw(message(transaction_pb2.TxHeader, world))
    if weighted(draw, [(True, 9), (False, 1)]):  # mostly consistent: the body is judged
        header.nonce = draw(st.binary(min_size=8, max_size=16)) + world.unique()
        header.tx_id = derive_tx_id(header.nonce, der)
        header.creator = name
        header.timestamp.FromSeconds(world.now - draw(st.integers(0, 30)))
    tx.header.CopyFrom(header)
    payload = tx.SerializeToString()
    if weighted(draw, [(False, 19), (True, 1)]):  # bytes no encoder writes, signed
        payload = mutate_bytes(draw, payload)
    envelope = envelope_pb2.SignedEnvelope(payload=payload, signature=key.sign(payload),
                                           signer_certificate=der)
    world.remember(header.tx_id)
    endorsed = envelope_pb2.EndorsedTransaction(envelope=envelope)
    endorsed.endorsements.extend(draw(endorsements(world, payload)))
    raw = endorsed.SerializeToString()
    if kind == "mutated_raw":
        raw = mutate_bytes(draw, raw)
    return raw


@st.composite
def endorsements(draw: st.DrawFn, world: World,
                 payload: bytes) -> list[envelope_pb2.Endorsement]:
    """Real batch endorsements (the payload at a random index of a batch of up to 5), by the
    real endorser or one the byzantine CA minted, sometimes with a broken proof field."""
    endorser = weighted(draw, [(world.endorser, 19), (world.minted["endorser"], 1)])
    size = draw(st.integers(1, 5))
    index = draw(st.integers(0, size - 1))
    others = [b"other %d" % i for i in range(size - 1)]
    payloads = [*others[:index], payload, *others[index:]]
    _, batch = endorser.endorse_batch(payloads)
    endorsement = batch[index]
    broken = weighted(draw, [(None, 90), *[(k, 1) for k in ("index", "count", "path",
                                                            "signature", "cert", "none",
                                                            "twice")]])
    if broken == "index":
        endorsement.leaf_index = draw(st.sampled_from(UINT32))
    elif broken == "count":
        endorsement.leaf_count = draw(st.sampled_from(UINT32))
    elif broken == "path":
        endorsement.audit_path.append(draw(st.binary(max_size=40)))
    elif broken == "signature":
        endorsement.signature = draw(st.binary(max_size=70))
    elif broken == "cert":
        endorsement.endorser_certificate = draw(signer(world))[2]
    elif broken == "none":
        return []
    elif broken == "twice":
        return [endorsement, endorsement]
    return [endorsement]


# -- the property -----------------------------------------------------------------------------

UNEXPECTED = ("rule failed:", "check failed:")


def judge_alone(world: World, raw: bytes) -> None:
    """The orderers' admission and the endorser's simulation reach a verdict too."""
    for check in (lambda: check_for_ordering(raw, world.genesis.membership,
                                             world.genesis.limits.max_tx_bytes),
                  lambda: _simulate(world, raw)):
        try:
            check()
        except TxInvalid as exc:
            assert not exc.message.startswith(UNEXPECTED), exc.message


def _simulate(world: World, raw: bytes) -> None:
    if len(raw) > world.genesis.limits.max_tx_bytes:
        return
    replica = world.replicas.ledgers[2]
    checked = check_endorsed_transaction(raw, replica.signers(world.now))
    replica.simulate(checked, world.now)


def assert_bound_signers(world: World, raw: bytes) -> None:
    """A VALID transaction's creator and endorsers are accounts of the organisations whose CA
    issued their certificates, in their roles (genesis, or registered on the ledger)."""
    tx = envelope_pb2.EndorsedTransaction.FromString(raw)
    membership = world.genesis.membership
    book = LedgerAccounts(StateOverlay(world.replicas.ledgers[0].store))
    certificates = [tx.envelope.signer_certificate,
                    *[e.endorser_certificate for e in tx.endorsements]]
    for der in certificates:
        who = membership.certificate(der)
        account = membership.accounts.get(who.name) or book.registered(who.name)
        assert account == Account(who.name, who.org, who.role), (who, account)
    if membership.certificate(tx.envelope.signer_certificate).name not in membership.accounts:
        world.valid_by_registered += 1
    # Endorsers are node identities: the genesis's only, never registered on the ledger.
    assert all(membership.certificate(e.endorser_certificate).name in membership.accounts
               for e in tx.endorsements)


def commit_block(world: World, transactions: list[bytes]) -> CommitResult:
    world.now = int(time.time())
    for raw in transactions:
        judge_alone(world, raw)
    result = world.replicas.commit(transactions)  # asserts the replicas agree
    world.transactions += len(transactions)
    world.raw_seen.extend(transactions)
    for code, message_ in zip(result.codes, result.messages, strict=True):
        name = Code.Name(code)
        world.codes[name] = world.codes.get(name, 0) + 1
        assert (code == Code.TX_VALIDATION_CODE_VALID) == (message_ == ""), (name, message_)
        assert not message_.startswith(UNEXPECTED), f"unfound root cause: {message_}"
    for raw, code in zip(transactions, result.codes, strict=True):
        if code == Code.TX_VALIDATION_CODE_VALID:
            assert_bound_signers(world, raw)
            body = _body_of(raw)
            world.valid_bodies[body] = world.valid_bodies.get(body, 0) + 1
    return result


def _body_of(raw: bytes) -> str:
    """The body type of a committed (so well-formed) endorsed transaction."""
    envelope = envelope_pb2.EndorsedTransaction.FromString(raw).envelope
    return transaction_pb2.Transaction.FromString(envelope.payload).WhichOneof("body") or ""


# -- block 1: valid money transactions ------------------------------------------------------

FUNDING = 7_000_000
TRANSFER = 3_000_000


def settleable_slot(world: World) -> int:
    """The latest slot whose readings deadline (slot end + submission window) has passed a
    slot length ago, so a block cut now settles it whatever second it is cut in."""
    slot = world.genesis.market.slot_seconds
    window = world.genesis.reading_submission_window_seconds
    return ((world.now - window) // slot - 2) * slot


def money_block(world: World, slot: int) -> list[bytes]:
    """One valid transaction of each money body, as the honest accounts send them: the
    treasury funds the settlement account, which pays meter-2 out of that funding (it holds
    no genesis money, so only in this order) and settles `slot` (no trades: an empty, valid
    settlement)."""
    bodies = [("treasury", "fund_account",
               settlement_pb2.FundAccount(account="settlement", amount_micro=FUNDING)),
              ("settlement", "transfer",
               settlement_pb2.Transfer(to="meter-2", amount_micro=TRANSFER)),
              ("settlement", "settle_slot", settlement_pb2.SettleSlot(slot_start=slot))]
    txs = []
    for creator, field, value in bodies:
        env = world.ids[creator].new_transaction(field, value, timestamp=world.now - 1)
        txs.append(envelope_pb2.EndorsedTransaction(
            envelope=env, endorsements=[world.endorser.endorse(env)]).SerializeToString())
    return txs


def commit_money_block(world: World) -> None:
    """Block 1 of every run: every replica commits the money block VALID (`Replicas.commit`
    asserts they agree on codes, messages and state root), and it did what it says."""
    world.now = int(time.time())
    slot = settleable_slot(world)
    before = [{name: money.get_account(StateOverlay(ledger.store), world.genesis,
                                       name).balance_micro
               for name in ("meter-2", "settlement")}
              for ledger in world.replicas.ledgers]
    txs = money_block(world, slot)
    result = commit_block(world, txs)
    assert [Code.Name(c) for c in result.codes] == ["TX_VALIDATION_CODE_VALID"] * len(txs), (
        result.messages)
    for ledger, balances in zip(world.replicas.ledgers, before, strict=True):
        state = StateOverlay(ledger.store)
        after = {name: money.get_account(state, world.genesis, name).balance_micro
                 for name in balances}
        assert after == {"meter-2": balances["meter-2"] + TRANSFER,
                         "settlement": balances["settlement"] + FUNDING - TRANSFER}
        raw = ledger.get_state(schema.settlement_key(slot))
        assert raw is not None
        assert settlement_pb2.SlotSettlement.FromString(raw).settled_by == "settlement"


@pytest.fixture()
def world(genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> World:
    w = World(genesis, consortium_dir, tmp_path)
    w.register_minted()
    yield w  # type: ignore[misc]
    w.replicas.close()


def test_fuzzed_blocks_keep_every_replica_committing_in_agreement(world: World) -> None:
    run: Callable[[], None]

    @settings(max_examples=BLOCKS, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(block=st.lists(transaction(world), min_size=BLOCK_SIZE[0], max_size=BLOCK_SIZE[1]))
    def run(block: list[bytes]) -> None:
        commit_block(world, block)

    commit_money_block(world)
    run()
    assert world.transactions >= MIN_TRANSACTIONS
    assert all(ledger.height == world.replicas.ledgers[0].height
               for ledger in world.replicas.ledgers)
    # The fuzz must reach the rules, not stop at the door: valid transactions and rule
    # verdicts are among the codes.
    assert world.codes.get("TX_VALIDATION_CODE_VALID", 0) > 0, world.codes
    assert world.codes.get("TX_VALIDATION_CODE_INVALID_BODY", 0) > 0, world.codes
    # The byzantine member's registered devices reach the rules too (not only the door).
    assert world.valid_by_registered > 0, world.codes
    world.replicas.check_replay()
    print(f"{world.transactions} transactions in {world.replicas.ledgers[0].height} blocks:",
          world.codes, world.valid_bodies)
