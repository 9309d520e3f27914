"""gridctl's money and settlement commands: amounts in currency units with 6 decimals both
ways, the transactions they sign, and the queries run for real (gridctl's parser, its
network.json, mTLS as the devnet's `admin`) against a committer NodeServer over a ledger
holding money and settlement records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from money_helpers import SLOT, money_ledger, serve_committer

from gridctl import commands_money as money
from gridctl import devnet
from gridctl.main import build_parser, main
from gridledger.common.v1 import transaction_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.signing_identity import SigningIdentity


def test_units_show_six_decimals() -> None:
    assert money.units(0) == "0.000000"
    assert money.units(1) == "0.000001"
    assert money.units(3_500_000) == "3.500000"
    assert money.units(-1_500_001) == "-1.500001"


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_amounts_parse_back_to_the_micro_units_shown(micro: int) -> None:
    assert money.parse_amount(money.units(micro)) == micro


@pytest.mark.parametrize("text", ["0", "0.0", "-1", "1.0000001", "1,5", "", "abc", "1e3",
                                  "9223372036854.775808"])
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(Exception, match="amount"):
        money.parse_amount(text)


def test_transactions_carry_the_bodies_asked_for(consortium_dir: Path) -> None:
    admin = SigningIdentity.load(consortium_dir, "admin")
    plant = SigningIdentity.load(consortium_dir, "plant-1")

    def body(envelope: object) -> transaction_pb2.Transaction:
        return transaction_pb2.Transaction.FromString(envelope.payload)  # type: ignore[attr-defined]
    fund = body(money.fund_tx(admin, "meter-1", 2_500_000, "paid in"))
    assert (fund.WhichOneof("body"), fund.fund_account.account, fund.fund_account.amount_micro,
            fund.fund_account.memo, fund.header.creator) == (
        "fund_account", "meter-1", 2_500_000, "paid in", "admin")
    pay = body(money.transfer_tx(plant, "meter-2", 1))
    assert (pay.WhichOneof("body"), pay.transfer.to, pay.transfer.amount_micro) == (
        "transfer", "meter-2", 1)
    redeem = body(money.redeem_tx(plant, 3))
    assert (redeem.WhichOneof("body"), redeem.redeem_coins.coins) == ("redeem_coins", 3)


def test_coins_redeem_extends_the_energy_commands_coins() -> None:
    parser = build_parser()
    assert parser.parse_args(["coins", "balance", "plant-1"]).account == "plant-1"
    args = parser.parse_args(["coins", "redeem", "--coins", "3", "--as", "plant-1"])
    assert (args.coins, args.as_signer, args.func) == (3, "plant-1", money.cmd_coins_redeem)
    fund = parser.parse_args(["account", "fund", "--account", "meter-1", "--amount", "2.5"])
    assert (fund.amount, fund.as_signer) == (2_500_000, "treasury")


@pytest.fixture()
def network(genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> Iterator[Path]:
    server = serve_committer(money_ledger(genesis), consortium_dir)
    committer = devnet.Node("committer-1", "committer", f"localhost:{server.port}",
                            "127.0.0.1:0", str(tmp_path / "c1"), str(tmp_path / "c1.log"))
    devnet.Network(tmp_path, consortium_dir, [committer]).save()
    yield tmp_path
    server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_account_show_and_history(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = json.loads(run(capsys, "account", "show", "--dir", str(network), "--account",
                           "meter-1", "--json"))
    assert (shown["balance"], shown["reserved"], shown["total"], shown["currency"],
            shown["balance_micro"]) == ("3.500000", "0.500000", "4.000000", "EUR", 3_500_000)
    table = run(capsys, "account", "show", "--dir", str(network), "--account", "meter-3")
    assert "balance   7.000000" in table and "_micro" not in table
    history = json.loads(run(capsys, "account", "history", "--dir", str(network),
                             "--account", "meter-1", "--json"))
    assert [(e["sequence"], e["kind"], e["balance_change"]) for e in history["entries"]] == [
        (2, "reserve", "-0.500000"), (1, "transfer", "-1.000000"), (0, "funding", "5.000000")]
    oldest = run(capsys, "account", "history", "--dir", str(network), "--account", "meter-1",
                 "--oldest-first", "--limit", "1")
    lines = oldest.splitlines()
    assert lines[0] == "amounts in EUR" and lines[1].startswith("SEQUENCE")
    assert lines[2].split()[:3] == ["0", "funding", "5.000000"] and len(lines) == 3


def test_settlement_show_and_statements(network: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    slot = json.loads(run(capsys, "settlement", "show", "--dir", str(network), "--slot",
                          str(SLOT), "--json"))
    assert (slot["traded_wh"], slot["shortfall_wh"], slot["withheld"]) == (1500, 200, 0)
    assert [(s["meter"], s["sold_wh"], s["bought_wh"]) for s in slot["statements"]] == [
        ("meter-1", 1500, 0), ("meter-2", 0, 1500)]
    table = run(capsys, "settlement", "show", "--dir", str(network), "--slot", str(SLOT))
    assert "METER" in table and "meter-2" in table
    statements = json.loads(run(capsys, "settlement", "statements", "--dir", str(network),
                                "--meter", "meter-1", "--json"))
    assert [s["slot_start"] for s in statements["statements"]] == [SLOT - 3600, SLOT]


def test_query_errors_exit_nonzero_with_the_committers_reason(
        network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["settlement", "show", "--dir", str(network), "--slot", str(SLOT + 3600)])
    assert info.value.code == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["account", "show", "--dir", str(network), "--account", "no/such"])
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_the_operations_guides_treasury_recipe_reaches_a_committer(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """docs/operations.md, "Keys that stay off the cluster": the treasury key signs on the
    operator's machine, through port-forwards named in a hand-written network.json. That file
    as written (two nodes, empty paths, `localhost` as the TLS name) must load and reach a
    committer, and the documented fund command must parse as a treasury-signed funding."""
    guide = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    recipe = guide.split("cat > ops/network.json <<EOF\n", 1)[1].split("  EOF\n", 1)[0]
    server = serve_committer(money_ledger(genesis), consortium_dir)
    try:
        text = (recipe.replace("$PWD/consortium", str(consortium_dir))
                .replace("localhost:17051", f"localhost:{server.port}"))
        (tmp_path / "ops").mkdir()
        (tmp_path / "ops" / "network.json").write_text(text)
        shown = json.loads(run(capsys, "account", "show", "--dir", str(tmp_path / "ops"),
                               "--account", "meter-1", "--json"))
        assert shown["balance_micro"] == 3_500_000
    finally:
        server.stop()
    fund_line = next(line for line in guide.splitlines()
                     if "gridctl account fund --dir ops" in line)
    args = build_parser().parse_args(fund_line.split("gridctl ", 1)[1].split())
    assert (args.func, args.as_signer, args.account, args.amount) == (
        money.cmd_account_fund, "treasury", "meter-1", 100_000_000)
