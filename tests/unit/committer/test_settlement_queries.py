"""The committer's money and settlement queries (issue 14 item 9) over a real Ledger whose
state the money primitives (rules/money.py) and stored settlement records wrote: numbers,
paging in both orders, the genesis allocation of an untouched account, who may read whose
account, and a specific status for each bad input. One test goes through a real NodeServer
over mTLS, so the caller the interceptor verified is the one the query judges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext
from money_helpers import SLOT, money_ledger, serve_committer

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import settlement_pb2
from gridledger_committer import settlement_queries as q
from gridledger_committer.service import CommitterServicer
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.rpc.peer_identity import Peer
from gridledger_core.rpc.tls import TlsFiles

ABORT = FakeContext().abort

METER_1 = Peer("meter-1", "community", Role.METER)
METER_2 = Peer("meter-2", "community", Role.METER)
COMMUNITY_ADMIN = Peer("community-admin", "community", Role.ADMIN)
UTILITY_ADMIN = Peer("utility-admin", "utility", Role.ADMIN)
OPERATOR = Peer("admin", "gridops", Role.ADMIN)
TREASURY = Peer("treasury", "gridops", Role.TREASURY)
PLANT = Peer("plant-1", "solarco", Role.PLANT)


@pytest.fixture()
def ledger(genesis: Genesis) -> Ledger:
    return money_ledger(genesis)


def refused(call: object, *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(Aborted) as info:
        call(*args, ABORT)  # type: ignore[operator]
    return info.value.code, info.value.details


def account(ledger: Ledger, caller: Peer, name: str = "") -> settlement_pb2.MoneyAccount:
    return q.get_account(ledger, caller, committer_pb2.GetAccountRequest(account=name),
                         ABORT).account


def test_account_shows_balance_and_reserved(ledger: Ledger) -> None:
    got = q.get_account(ledger, METER_1, committer_pb2.GetAccountRequest(), ABORT)
    assert (got.account.account, got.account.balance_micro, got.account.reserved_micro,
            got.account.entries, got.currency) == ("meter-1", 3_500_000, 500_000, 3, "EUR")
    assert account(ledger, METER_2, "meter-2").balance_micro == 1_000_000


def test_untouched_account_holds_its_genesis_allocation(ledger: Ledger) -> None:
    got = account(ledger, COMMUNITY_ADMIN, "meter-3")
    assert (got.balance_micro, got.reserved_micro, got.entries) == (7_000_000, 0, 0)
    assert account(ledger, PLANT, "plant-1").balance_micro == 0  # an account, no money yet
    # Not a consortium account, but allocated in genesis: the operators may read it.
    assert account(ledger, TREASURY, "balancing").balance_micro == 1


def test_unknown_account_is_not_found(ledger: Ledger) -> None:
    code, details = refused(q.get_account, ledger, OPERATOR,
                            committer_pb2.GetAccountRequest(account="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND and "no account 'nobody'" in details


@pytest.mark.parametrize(("caller", "allowed"), [
    (METER_1, False), (PLANT, False), (UTILITY_ADMIN, False),  # others and other orgs' admins
    (METER_2, True), (COMMUNITY_ADMIN, True), (OPERATOR, True), (TREASURY, True),
    (Peer("settlement", "gridops", Role.SETTLEMENT), True),
    (Peer("rogue-treasury", "community", Role.TREASURY), False),  # not the initiating org
])
def test_who_may_read_an_account(ledger: Ledger, caller: Peer, allowed: bool) -> None:
    calls = [
        (q.get_account, committer_pb2.GetAccountRequest(account="meter-2")),
        (q.list_account_entries, committer_pb2.ListAccountEntriesRequest(account="meter-2")),
        (q.list_meter_statements, committer_pb2.ListMeterStatementsRequest(meter="meter-2")),
    ]
    for call, request in calls:
        if allowed:
            call(ledger, caller, request, ABORT)  # type: ignore[operator]
        else:
            code, details = refused(call, ledger, caller, request)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "an account of community" in details


def test_bad_input_gets_a_specific_status(ledger: Ledger) -> None:
    cases = [
        (q.get_account, committer_pb2.GetAccountRequest(account="a/b"), "without '/'"),
        (q.list_account_entries, committer_pb2.ListAccountEntriesRequest(page_size=1001),
         "page_size 1001 is above 1000"),
        (q.list_account_entries, committer_pb2.ListAccountEntriesRequest(page_token="x"),
         "page_token 'x' is not from this listing"),
        (q.list_account_entries, committer_pb2.ListAccountEntriesRequest(page_token="\u00b2"),
         "is not from this listing"),  # a digit to str.isdigit, not to int()
        (q.list_account_entries, committer_pb2.ListAccountEntriesRequest(page_token="3"),
         "meter-1 has 3 entries"),
        (q.get_slot_settlement, committer_pb2.GetSlotSettlementRequest(slot_start=SLOT + 900),
         "not the start of a delivery slot"),
        (q.get_slot_settlement, committer_pb2.GetSlotSettlementRequest(slot_start=-3600),
         "not the start of a delivery slot"),
        (q.list_meter_statements, committer_pb2.ListMeterStatementsRequest(),
         "meter must be 1 to"),
        (q.list_meter_statements, committer_pb2.ListMeterStatementsRequest(
            meter="meter-1", page_token="statement-meter/meter-2/x"), "not from this listing"),
    ]
    for call, request, message in cases:
        code, details = refused(call, ledger, METER_1, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details


def test_entries_newest_first_by_default_and_paged(ledger: Ledger) -> None:
    def page(**kw: object) -> committer_pb2.ListAccountEntriesResponse:
        return q.list_account_entries(
            ledger, METER_1, committer_pb2.ListAccountEntriesRequest(**kw), ABORT)  # type: ignore[arg-type]
    first = page(page_size=2)
    assert [e.sequence for e in first.entries] == [2, 1]
    assert [e.kind for e in first.entries] == [settlement_pb2.ENTRY_KIND_RESERVE,
                                               settlement_pb2.ENTRY_KIND_TRANSFER]
    rest = page(page_size=2, page_token=first.next_page_token)
    assert ([e.sequence for e in rest.entries], rest.next_page_token) == ([0], "")
    oldest = page(oldest_first=True)
    assert [(e.sequence, e.balance_delta_micro, e.reserved_delta_micro, e.reference)
            for e in oldest.entries] == [(0, 5_000_000, 0, "tx-fund"),
                                         (1, -1_000_000, 0, "tx-transfer"),
                                         (2, -500_000, 500_000, "order-1")]
    untouched = q.list_account_entries(ledger, COMMUNITY_ADMIN,
                                       committer_pb2.ListAccountEntriesRequest(account="meter-3"),
                                       ABORT)
    assert untouched.entries == []  # genesis allocation: no entries yet


def test_slot_settlement_with_the_statements_the_caller_may_read(ledger: Ledger) -> None:
    request = committer_pb2.GetSlotSettlementRequest(slot_start=SLOT)
    mine = q.get_slot_settlement(ledger, METER_1, request, ABORT)
    assert (mine.settlement.traded_wh, mine.settlement.shortfall_wh) == (1500, 200)
    assert ([s.meter for s in mine.statements], mine.withheld) == (["meter-1"], 1)
    everyone = q.get_slot_settlement(ledger, OPERATOR, request, ABORT)
    assert ([s.meter for s in everyone.statements], everyone.withheld) == (
        ["meter-1", "meter-2"], 0)
    paged = q.get_slot_settlement(ledger, OPERATOR, committer_pb2.GetSlotSettlementRequest(
        slot_start=SLOT, page_size=1), ABORT)
    assert [s.meter for s in paged.statements] == ["meter-1"] and paged.next_page_token
    code, details = refused(q.get_slot_settlement, ledger, OPERATOR,
                            committer_pb2.GetSlotSettlementRequest(slot_start=SLOT + 3600))
    assert code == grpc.StatusCode.NOT_FOUND and "is not settled" in details


def test_a_meters_statements_by_slot(ledger: Ledger) -> None:
    first = q.list_meter_statements(ledger, METER_1, committer_pb2.ListMeterStatementsRequest(
        meter="meter-1", page_size=1), ABORT)
    assert [(s.slot_start, s.sold_wh) for s in first.statements] == [(SLOT - 3600, 1500)]
    rest = q.list_meter_statements(ledger, METER_1, committer_pb2.ListMeterStatementsRequest(
        meter="meter-1", page_token=first.next_page_token), ABORT)
    assert ([s.slot_start for s in rest.statements], rest.next_page_token) == ([SLOT], "")
    # A meter whose name prefixes another's sees only its own.
    none = q.list_meter_statements(ledger, OPERATOR, committer_pb2.ListMeterStatementsRequest(
        meter="meter-"), ABORT)
    assert none.statements == []


def test_servicer_without_a_verified_caller_refuses(ledger: Ledger) -> None:
    servicer = CommitterServicer(ledger, HeightNotifier(lambda: ledger.height))
    with pytest.raises(Aborted) as info:
        servicer.GetAccount(committer_pb2.GetAccountRequest(account="meter-1"),
                            FakeContext())  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture()
def served(ledger: Ledger, consortium_dir: Path) -> Iterator[int]:
    server = serve_committer(ledger, consortium_dir)
    yield server.port
    server.stop()


def test_over_mtls_the_verified_caller_is_judged(served: int, consortium_dir: Path) -> None:
    def ask(caller: str, name: str) -> grpc.StatusCode:
        tls = TlsFiles.for_node(consortium_dir, caller)
        with grpc.secure_channel(f"localhost:{served}", tls.channel_credentials()) as channel:
            stub = committer_pb2_grpc.CommitterServiceStub(channel)
            try:
                stub.GetAccount(committer_pb2.GetAccountRequest(account=name), timeout=10)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined, no-any-return]
            return grpc.StatusCode.OK
    assert ask("meter-1", "") == grpc.StatusCode.OK
    assert ask("meter-1", "meter-2") == grpc.StatusCode.PERMISSION_DENIED
    assert ask("community-admin", "meter-2") == grpc.StatusCode.OK
    assert ask("utility-admin", "meter-2") == grpc.StatusCode.PERMISSION_DENIED
    assert ask("admin", "meter-2") == grpc.StatusCode.OK
