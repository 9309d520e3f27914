"""The launcher refuses a consortium directory made before genesis accounts and orderer TLS
pins existed: every signature and call would be refused, so it says what to do instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridctl import devnet


def test_a_consortium_without_accounts_is_refused_with_what_to_do(tmp_path: Path) -> None:
    consortium = tmp_path / "consortium"
    genesis = devnet.ensure_consortium(consortium)
    assert genesis.accounts and all(o.tls_certificate_pem for o in genesis.orderers)
    doc = json.loads((consortium / "genesis.json").read_text())
    del doc["accounts"]
    (consortium / "genesis.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match=r"older GridLedger.*delete its directory"):
        devnet.ensure_consortium(consortium)
