"""A ledger for the new-energy and readings rules: the devnet topology plus a treasury and a
settlement account of gridops, money allocations in genesis, and helpers that commit one
transaction per block at a controllable block time (`World.now`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from ledger_helpers import ChainBuilder, endorsed, identity, reading

from gridledger.common.v1 import block_pb2, energy_pb2, envelope_pb2, settlement_pb2
from gridledger_core.consortium import NodeSpec, create_consortium, default_topology
from gridledger_core.energy import certificate
from gridledger_core.energy.terms import cancel_consent, contract_id, new_terms
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore

INTERVAL = 900
WINDOW = 3600  # readings submission window (the genesis default)
VALID = Code.TX_VALIDATION_CODE_VALID
ALLOCATIONS = {"meter-1": 1_000_000, "meter-2": 1_000_000, "meter-3": 0, "treasury": 100_000}
REDEEM_VALUE = 50


def make_consortium(directory: Path) -> Path:
    """The default topology with gridops' `treasury` and `settler` accounts, and money."""
    topology = default_topology()
    ops = next(o for o in topology.orgs if o.name == "gridops")
    names = {n.name for n in ops.nodes}  # the devnet topology may have a treasury already
    ops.nodes += [NodeSpec(name, role) for name, role in (("treasury", Role.TREASURY),
                                                          ("settler", Role.SETTLEMENT))
                  if name not in names]
    path = create_consortium(directory, topology, reading_interval_seconds=INTERVAL)
    doc = json.loads(path.read_bytes())
    doc["settlement"] = {"allocations": ALLOCATIONS, "coin_redeem_value_micro": REDEEM_VALUE,
                         "max_contract_seconds": 7 * 86400}
    path.write_text(json.dumps(doc, indent=2))
    return directory


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Ordering proofs are the consensus core's tests; these are about the rules."""


class World:
    def __init__(self, genesis: Genesis, consortium_dir: Path) -> None:
        self.genesis = genesis
        self.dir = consortium_dir
        self.ledger = Ledger(MemoryStore(), genesis, accept_proof)
        self.chain = ChainBuilder()
        self.endorser = identity(consortium_dir, "endorser-1")
        # Block time a little after the transactions are signed (never before: the ledger
        # refuses a transaction dated after its block).
        self.now = int(time.time()) + 5
        self._who: dict[str, SigningIdentity] = {}

    def who(self, name: str) -> SigningIdentity:
        if name not in self._who:
            self._who[name] = identity(self.dir, name)
        return self._who[name]

    def submit(self, signer: SigningIdentity | str, field: str,
               body: object) -> tuple[int, str, str]:
        signer = self.who(signer) if isinstance(signer, str) else signer
        # Signed just before its block, whatever time the block is at.
        env = signer.new_transaction(field, body, timestamp=self.now - 1)  # type: ignore[arg-type]
        return self.commit_envelope(env)

    def ok(self, signer: SigningIdentity | str, field: str, body: object) -> str:
        code, message, tx_id = self.submit(signer, field, body)
        assert code == VALID, message
        return tx_id

    def commit_envelope(self, env: envelope_pb2.SignedEnvelope) -> tuple[int, str, str]:
        result = self.ledger.commit(self.chain.block([endorsed(env, self.endorser)],
                                                     timestamp=self.now))
        return result.codes[0], result.messages[0], result.tx_ids[0]

    def state(self) -> list[tuple[bytes, bytes]]:
        return list(self.ledger.store.scan(schema.STATE))

    def refused(self, signer: SigningIdentity | str, field: str, body: object, code: int,
                text: str) -> None:
        before = self.state()
        got, message, _ = self.submit(signer, field, body)
        assert (Code.Name(got), text in message) == (Code.Name(code), True), message
        assert self.state() == before

    # -- builders ---------------------------------------------------------------------------

    def announce(self, plant: str = "plant-1", remaining: int = 10_000, contracted: int = 0,
                 windows: list[tuple[int, int]] | None = None, price: int = 100_000,
                 threshold_w: int = 50_000) -> energy_pb2.PlantAnnouncement:
        return energy_pb2.PlantAnnouncement(
            plant=plant, price_micro_per_kwh=price, threshold_w=threshold_w,
            remaining_wh=remaining, contracted_wh=contracted,
            pv_panel_ids=[f"{plant}-pv-1", f"{plant}-pv-2"], coin_value_micro=100,
            endpoint="127.0.0.1:1",
            shortfall_windows=[energy_pb2.ShortfallWindow(start=s, end=e)
                               for s, e in (windows or [])])

    def terms(self, plant: str = "plant-1", meter: str = "meter-1", energy: int = 100,
              coins: int = 0, panel: str | None = None, expires_in: int = 600,
              signer: str | None = None, deliver_in: int = 86400) -> envelope_pb2.SignedEnvelope:
        body = new_terms(meter=meter, plant=plant, price_micro_per_kwh=100_000, energy_wh=energy,
                         pv_panel_id=panel or f"{plant}-pv-1", plant_remaining_wh=10_000,
                         coins_paid=coins, coin_value_micro=100,
                         expires_at=self.now + expires_in, deliver_by=self.now + deliver_in)
        return self.who(signer or plant).sign_envelope(body.SerializeToString())

    def contract(self, meter: str = "meter-1", **kw: object) -> tuple[int, str, str]:
        terms = self.terms(meter=meter, **kw)  # type: ignore[arg-type]
        code, message, _ = self.submit(meter, "supply_contract",
                                       energy_pb2.SupplyContract(plant_terms=terms))
        return code, message, contract_id(terms.payload)

    def open_contract(self, meter: str = "meter-1", **kw: object) -> str:
        code, message, cid = self.contract(meter, **kw)
        assert code == VALID, message
        return cid

    def record(self, cid: str) -> energy_pb2.SupplyContractRecord:
        raw = self.ledger.get_state(schema.contract_key(cid))
        assert raw is not None
        return energy_pb2.SupplyContractRecord.FromString(raw)

    def plant(self, name: str = "plant-1") -> energy_pb2.PlantRecord:
        raw = self.ledger.get_state(schema.plant_key(name))
        assert raw is not None
        return energy_pb2.PlantRecord.FromString(raw)

    def carbon(self, account: str) -> energy_pb2.CarbonAccount:
        raw = self.ledger.get_state(schema.carbon_key(account))
        return (energy_pb2.CarbonAccount.FromString(raw) if raw
                else energy_pb2.CarbonAccount(account=account))

    def coins(self, account: str) -> int:
        return self.carbon(account).coins

    def money(self, account: str) -> tuple[int, int]:
        """(balance, reserved) of `account`."""
        raw = self.ledger.get_state(schema.money_key(account))
        if raw is None:
            return ALLOCATIONS.get(account, 0), 0
        record = settlement_pb2.MoneyAccount.FromString(raw)
        return record.balance_micro, record.reserved_micro

    def money_total(self) -> int:
        """Sum of balance + reserved over every account that ever held money."""
        names = set(ALLOCATIONS) | {k[len(schema.STATE) + len("money/"):].decode()
                                    for k, _ in self.ledger.store.scan(schema.state_key("money/"))}
        return sum(sum(self.money(n)) for n in names)

    def supply(self) -> int:
        raw = self.ledger.get_state(schema.MONEY_SUPPLY)
        return int.from_bytes(raw, "big") if raw else sum(ALLOCATIONS.values())

    # -- readings ---------------------------------------------------------------------------

    def post(self, who: str, start: int, produced: int = 0, consumed: int = 0) -> tuple[int, str]:
        """A live reading committed just after its interval ended (block time moves on)."""
        self.now = max(self.now, start + INTERVAL + 1)
        code, message, _ = self.submit(who, "meter_reading",
                                       reading(who, start, produced, consumed))
        return code, message

    def deliver(self, meter: str, start: int, consumed: list[int],
                produced: list[int] | None = None, plant: str | None = "plant-1") -> None:
        """Consecutive intervals from `start`: the plant's reading (produced, default = the
        meter's consumption) and the meter's, each committed once the interval ended."""
        for i, wh in enumerate(consumed):
            t = start + i * INTERVAL
            if plant is not None:
                made = wh if produced is None else produced[i]
                code, message = self.post(plant, t, produced=made)
                assert code == VALID, message
            code, message = self.post(meter, t, consumed=wh)
            assert code == VALID, message

    def fulfilled(self, meter: str = "meter-1", energy: int = 100, coins: int = 0) -> str:
        cid = self.open_contract(meter=meter, energy=energy, coins=coins)
        self.deliver(meter, self.record(cid).delivery_start, [energy])
        self.ok(meter, "trade_end", energy_pb2.TradeEnd(contract_id=cid, delivered_wh=energy))
        return cid

    def issue(self, cid: str, issuer: str = "issuer") -> tuple[int, str, str]:
        body = certificate.issue_body(self.who(issuer), self.record(cid), self.genesis, self.now)
        return self.submit(issuer, "carbon_coin_issue", body)

    def consent(self, signer: str, cid: str, expires_in: int = 600,
                fmt: str | None = None) -> envelope_pb2.SignedEnvelope:
        body = cancel_consent(cid, self.now + expires_in)
        if fmt is not None:
            body.format = fmt
        return self.who(signer).sign_envelope(body.SerializeToString())


def new_world(genesis: Genesis, consortium_dir: Path, plants: tuple[str, ...] = ("plant-1",
                                                                                 "plant-2")
              ) -> World:
    w = World(genesis, consortium_dir)
    for plant in plants:
        w.ok(plant, "plant_announcement", w.announce(plant))
    return w


def conserved(w: World) -> None:
    """Money invariant (money.py): balances + reserved == supply."""
    assert w.money_total() == w.supply()


@pytest.fixture(scope="module")
def energy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_consortium(tmp_path_factory.mktemp("energy-consortium"))


@pytest.fixture(scope="module")
def energy_genesis(energy_dir: Path) -> Genesis:
    return Genesis.load(energy_dir / "genesis.json")
