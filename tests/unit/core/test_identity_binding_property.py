"""Membership.identify, the pure core of issue 13's binding: for any certificate a consortium
CA can issue, it is accepted exactly when its CN is an account of the issuing organisation
with the role in its OU, valid at the given time, and not revoked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identity_helpers import issued_by

from gridledger_core.genesis import Genesis
from gridledger_core.identity import Account, Identity, Role, UnknownSigner

ORGS = ["gridops", "utility", "community", "solarco"]
NAMES = ["meter-1", "plant-1", "endorser-1", "issuer", "admin", "community-admin", "meter-9",
         "stranger"]
REGISTERED = {"meter-9": Account("meter-9", "community", Role.METER)}
NOW = int(time.time())


class Book:
    """An AccountBook with fixed registrations and a set of revoked fingerprints."""

    def __init__(self, revoked: set[bytes]) -> None:
        self.revoked = revoked

    def registered(self, name: str) -> Account | None:
        return REGISTERED.get(name)

    def revoked_at(self, identity: Identity) -> int | None:
        return 7 if identity.fingerprint in self.revoked else None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ca_org=st.sampled_from(ORGS), name=st.sampled_from(NAMES),
       role=st.sampled_from([r.value for r in Role]), revoked=st.booleans(),
       expires_in=st.integers(-10, 10))
def test_accepted_exactly_when_bound_valid_and_not_revoked(
        consortium_dir: Path, genesis: Genesis, ca_org: str, name: str, role: str,
        revoked: bool, expires_in: int) -> None:
    signer = issued_by(consortium_dir, ca_org, name, role, not_after=NOW + expires_in)
    book = Book({genesis.membership.certificate(signer.certificate).fingerprint}
                if revoked else set())
    account = genesis.accounts.get(name) or REGISTERED.get(name)
    expected = (account is not None and account.org == ca_org and account.role.value == role
                and expires_in >= 0 and not revoked)
    try:
        identity = genesis.membership.identify(signer.certificate, NOW, book)
    except UnknownSigner:
        assert not expected
    else:
        assert expected
        assert (identity.name, identity.org, identity.role.value) == (name, ca_org, role)
    # Without the ledger's book: genesis accounts only, nothing revoked.
    genesis_only = (name in genesis.accounts and account is not None and account.org == ca_org
                    and account.role.value == role and expires_in >= 0)
    if genesis_only:
        genesis.membership.identify(signer.certificate, NOW, None)
    else:
        with pytest.raises(UnknownSigner):
            genesis.membership.identify(signer.certificate, NOW, None)
