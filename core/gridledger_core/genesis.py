"""The genesis configuration: organisations, orderer set, market and carbon parameters.

It is read from `genesis.json` in a consortium directory; its hash is taken over the exact file
bytes, so every node agrees on it without canonicalising JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gridledger_core.crypto import sha256
from gridledger_core.identity import Account, Membership, Role


@dataclass(frozen=True)
class MarketParams:
    """Pre-sale market rules. Prices are integer micro-units per kWh, quantities integer Wh."""

    slot_seconds: int = 3600
    open_before_seconds: int = 2 * 86400  # a slot's market opens this long before delivery
    gate_closure_seconds: int = 3600  # and closes this long before delivery
    price_min: int = 0
    price_max: int = 1_000_000
    price_tick: int = 1_000
    lot_wh: int = 100
    forecast_window_days: int = 7
    forecast_tolerance_percent: int = 10

    def gate_closure(self, slot_start: int) -> int:
        """When the market of the slot delivering at `slot_start` closes: orders placed or
        cancelled at a time before this only."""
        return slot_start - self.gate_closure_seconds


@dataclass(frozen=True)
class SettlementParams:
    """Money and settlement (issue 14). Money in integer micro-units of `currency`, prices in
    micro-units per kWh. Production defaults; the devnet's fast profile overrides some."""

    currency: str = "EUR"
    # An account of the initiating organisation that is the counterparty of every imbalance
    # (the balancing responsible party): it receives shortfall charges and pays surplus
    # credits (up to its balance). "" = no settlement on this network.
    balancing_account: str = ""
    # Imbalance prices: a meter short of its traded position buys the missing Wh at the
    # shortfall price; a meter beyond it is credited the surplus price.
    shortfall_price_micro_per_kwh: int = 1_000_000
    surplus_price_micro_per_kwh: int = 20_000
    # Collateral a sell order reserves per kWh offered (0: none).
    sell_collateral_micro_per_kwh: int = 0
    # Money per carbon coin the treasury pays on RedeemCoins (0: redemption closed).
    coin_redeem_value_micro: int = 0
    # Longest delivery period a supply contract may have (deliver_by - commit time).
    max_contract_seconds: int = 7 * 86400
    # Initial balances: account -> micro-units (counted as funded money).
    allocations: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """Sizes every role enforces on what it accepts (bytes)."""

    # One endorsed transaction (EndorsedTransaction bytes): endorser, orderers (unary and
    # batch) and committers refuse anything larger.
    max_tx_bytes: int = 128 * 1024


@dataclass(frozen=True)
class Organization:
    name: str
    signing_root_pem: bytes
    tls_root_pem: bytes


@dataclass(frozen=True)
class OrdererEntry:
    id: str
    org: str
    certificate_pem: bytes
    # The orderer's TLS certificate (PEM), pinned: peers accept consensus streams only from
    # a client presenting exactly this certificate. Empty in genesis files made before it.
    tls_certificate_pem: bytes = b""

    @cached_property
    def public_key(self) -> bytes:
        cert = x509.load_pem_x509_certificate(self.certificate_pem)
        return cert.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )


@dataclass(frozen=True)
class Genesis:
    consortium: str
    organizations: tuple[Organization, ...]
    initiating_organization: str
    orderers: tuple[OrdererEntry, ...]
    reading_interval_seconds: int
    max_interval_wh: int
    max_clock_skew_seconds: int
    market: MarketParams
    carbon_grams_per_kwh: int
    raw: bytes
    # Every account of the consortium with its organisation and role (name -> Account).
    accounts: dict[str, Account]
    limits: Limits
    settlement: SettlementParams = field(default_factory=SettlementParams)
    # A reading is accepted until its interval's end plus this window (block time); older
    # readings only as onboarding history (HistoryReadings) before the meter's first order.
    reading_submission_window_seconds: int = 3600

    @classmethod
    def parse(cls, raw: bytes) -> Genesis:
        doc = json.loads(raw)
        orgs = tuple(
            Organization(o["name"], o["signing_root"].encode(), o["tls_root"].encode())
            for o in doc["organizations"]
        )
        names = {o.name for o in orgs}
        orderers = tuple(
            OrdererEntry(o["id"], o["org"], o["certificate"].encode(),
                         o.get("tls_certificate", "").encode())
            for o in doc["orderers"]
        )
        accounts: dict[str, Account] = {}
        for a in doc.get("accounts", []):
            if a["org"] not in names:
                raise ValueError(f"account {a['name']} belongs to unknown organisation {a['org']}")
            if a["name"] in accounts:
                raise ValueError(f"account {a['name']} is listed twice")
            accounts[a["name"]] = Account(a["name"], a["org"], Role(a["role"]))
        if doc["initiating_organization"] not in names:
            raise ValueError("initiating_organization is not one of the organizations")
        for o in orderers:
            if o.org not in names:
                raise ValueError(f"orderer {o.id} belongs to unknown organisation {o.org}")
        market = MarketParams(**doc.get("market", {}))
        settlement = _settlement(doc.get("settlement", {}), accounts)
        if (settlement.balancing_account
                and settlement.shortfall_price_micro_per_kwh < market.price_max):
            # Else a seller profits from selling energy it never delivers (issue 14).
            raise ValueError("settlement.shortfall_price_micro_per_kwh must be at least "
                             "market.price_max when a balancing account settles imbalances")
        return cls(
            consortium=doc["consortium"],
            organizations=orgs,
            initiating_organization=doc["initiating_organization"],
            orderers=orderers,
            reading_interval_seconds=int(doc["readings"]["interval_seconds"]),
            max_interval_wh=int(doc["readings"]["max_interval_wh"]),
            max_clock_skew_seconds=int(doc["readings"].get("max_clock_skew_seconds", 300)),
            market=market,
            carbon_grams_per_kwh=int(doc["carbon"]["grams_per_kwh"]),
            raw=raw,
            accounts=accounts,
            limits=Limits(**doc.get("limits", {})),
            settlement=settlement,
            reading_submission_window_seconds=int(
                doc["readings"].get("submission_window_seconds", 3600)),
        )

    def initiating_account(self, name: str, role: Role) -> bool:
        """True if `name` is a genesis account of the initiating organisation with `role`."""
        account = self.accounts.get(name)
        return (account is not None and account.org == self.initiating_organization
                and account.role == role)

    def admins(self, org: str) -> list[str]:
        """The genesis admins of `org` (who may register accounts and revoke certificates)."""
        return sorted(a.name for a in self.accounts.values()
                      if a.org == org and a.role == Role.ADMIN)

    @classmethod
    def load(cls, path: Path) -> Genesis:
        return cls.parse(path.read_bytes())

    @cached_property
    def hash(self) -> bytes:
        return sha256(self.raw)

    @cached_property
    def membership(self) -> Membership:
        return Membership({o.name: o.signing_root_pem for o in self.organizations}, self.accounts)

    @cached_property
    def orderer_keys(self) -> dict[str, bytes]:
        """Orderer id -> raw Ed25519 public key (also its ECVRF public key)."""
        return {o.id: o.public_key for o in self.orderers}

    @cached_property
    def tls_roots_pem(self) -> bytes:
        return b"".join(o.tls_root_pem for o in self.organizations)


def _settlement(doc: dict, accounts: dict[str, Account]) -> SettlementParams:
    """The settlement section; every account it names must be a genesis account."""
    params = SettlementParams(**{k: v for k, v in doc.items() if k != "allocations"},
                              allocations={str(k): int(v)
                                           for k, v in doc.get("allocations", {}).items()})
    for name, amount in params.allocations.items():
        if not 0 <= amount < 2**63:
            raise ValueError(f"allocation of {name} is outside 0..2^63-1")
    if sum(params.allocations.values()) >= 2**63:
        raise ValueError("genesis allocations add up to more than 2^63-1")
    for price in (params.shortfall_price_micro_per_kwh, params.surplus_price_micro_per_kwh,
                  params.sell_collateral_micro_per_kwh, params.coin_redeem_value_micro):
        if not 0 <= price < 2**40:
            raise ValueError("settlement prices must be within 0..2^40-1")
    for name in [params.balancing_account, *params.allocations]:
        if name and name not in accounts:
            raise ValueError(f"settlement names {name}, which is not a genesis account")
    return params
