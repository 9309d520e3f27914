"""Clients check before they sign (issue 14 item 8): the meter-agent's pre-sale trader and
`gridctl order place` against a real endorser servicer behind a hostile wrapper that answers
with an option that is not the answer to the client's request: another meter's option, one
from an earlier request, changed terms re-signed with the endorser's own keys, or one not
signed by an endorser. The old clients signed and submitted each of them; now nothing is
signed or submitted, the refusal names its condition (meter-agent: counted; gridctl: exit 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from market_helpers import NOW, SELL, SLOT, terms
from prometheus_client import REGISTRY
from test_endorser_market import Endorser, FakeContext, endorser  # noqa: F401 - the fixture

from gridctl.commands_market import EXIT_OPTION_REFUSED, request_and_accept
from gridledger.common.v1 import market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_committer.service import CommitterServicer
from gridledger_core.ledger.errors import Code
from gridledger_core.market.option_check import BAD_SIGNATURE, DIGEST, TERMS
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_meter_agent.ledger_client import LedgerClient
from gridledger_meter_agent.presale import PresalePolicy, PresaleTrader

Answer = endorser_pb2.RequestOptionsResponse
Tamper = Callable[[Endorser, Answer], Answer]


class HostileEndorser:
    """The real endorser servicer, whose RequestOptions answers are replaced by `tamper`'s;
    records every transaction a client submits."""

    def __init__(self, e: Endorser, tamper: Tamper | None) -> None:
        self._e, self._tamper = e, tamper
        self.submitted: list[Any] = []

    def RequestOptions(self, request: Any, timeout: float | None = None) -> Answer:
        answer = self._e.servicer.RequestOptions(request, FakeContext())  # type: ignore[arg-type]
        return self._tamper(self._e, answer) if self._tamper else answer

    def SubmitTransaction(self, request: Any, timeout: float | None = None) -> Any:
        self.submitted.append(request.envelope)
        return self._e.servicer.SubmitTransaction(request, FakeContext())  # type: ignore[arg-type]


class _Committer:
    def __init__(self, servicer: Any) -> None:
        self._servicer = servicer

    def __getattr__(self, name: str) -> Any:
        return lambda request, timeout=None: getattr(self._servicer, name)(request, FakeContext())


def resigned(e: Endorser, answer: Answer, change: Callable[[market_pb2.TradeOption], None],
             signer: str = "endorser-1") -> Answer:
    """The answer's option changed and signed again with `signer`'s own keys."""
    option = market_pb2.TradeOption.FromString(answer.option.payload)
    change(option)
    out = Answer()
    out.CopyFrom(answer)
    out.option.CopyFrom(e.ids[signer].sign_envelope(option.SerializeToString()))
    return out


def foreign_meter(e: Endorser, answer: Answer) -> Answer:
    # A genuine option the endorser made for meter-2's request, handed to meter-1.
    return e.request("meter-2", terms("meter-2", market_pb2.ORDER_SIDE_BUY, 250_000, 1000))


def replayed(e: Endorser, answer: Answer) -> Answer:
    # An option for an earlier request of the same meter with the same terms: valid on the
    # ledger, but not the answer to this request.
    asked = market_pb2.TradeOption.FromString(answer.option.payload).terms
    e.clock[0] += 1
    return e.request(asked.meter, asked)


def _set(field: str, value: object) -> Tamper:
    return lambda e, a: resigned(e, a, lambda o: setattr(o.terms, field, value))


def _double(e: Endorser, a: Answer) -> Answer:
    def change(o: market_pb2.TradeOption) -> None:
        o.rest_wh += o.terms.quantity_wh
        o.terms.quantity_wh *= 2
    return resigned(e, a, change)


HOSTILE: dict[str, tuple[Tamper, str]] = {
    "foreign_meter": (foreign_meter, DIGEST),
    "replayed_earlier_option": (replayed, DIGEST),
    "side_changed": (_set("side", market_pb2.ORDER_SIDE_BUY), TERMS),
    "slot_changed": (_set("slot_start", SLOT + 3600), TERMS),
    "price_changed": (_set("price", 1_000), TERMS),
    "quantity_changed": (_double, TERMS),
    "signed_by_a_meter": (lambda e, a: resigned(e, a, lambda o: None, "meter-2"),
                          BAD_SIGNATURE),
}


def trader(e: Endorser, hostile: HostileEndorser) -> PresaleTrader:
    committer = CommitterServicer(e.ledger, HeightNotifier(lambda: e.ledger.height))
    client = LedgerClient(hostile, _Committer(committer))  # type: ignore[arg-type]
    policy = PresalePolicy(share_percent=50, sell_price=240_000, buy_price=260_000)
    return PresaleTrader(e.ids["meter-1"], e.ledger.genesis, client, policy)


def refusals(condition: str) -> float:
    return REGISTRY.get_sample_value("gridledger_meter_presale_options_refused_total",
                                     {"condition": condition}) or 0.0


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_meter_agent_signs_no_option_it_did_not_ask_for(endorser: Endorser,  # noqa: F811
                                                         case: str) -> None:
    tamper, condition = HOSTILE[case]
    hostile = HostileEndorser(endorser, tamper)
    before = refusals(condition)
    trader(endorser, hostile).step(NOW, slot=SLOT)
    assert hostile.submitted == []
    assert endorser.broadcaster.sent == []
    assert refusals(condition) == before + 1


def test_meter_agent_signs_the_honest_answer(endorser: Endorser) -> None:  # noqa: F811
    hostile = HostileEndorser(endorser, None)
    trader(endorser, hostile).step(NOW, slot=SLOT)
    assert len(hostile.submitted) == 1
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_gridctl_order_place_refuses_and_exits_5(endorser: Endorser, case: str,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tamper, condition = HOSTILE[case]
    hostile = HostileEndorser(endorser, tamper)
    asked = terms("meter-1", SELL, 240_000, 3000)
    with pytest.raises(SystemExit) as info:
        request_and_accept(hostile, endorser.ids["meter-1"], asked, endorser.ledger.genesis,
                           NOW)
    assert info.value.code == EXIT_OPTION_REFUSED
    assert f"refused to sign the endorser's option: {condition}" in capsys.readouterr().err
    assert hostile.submitted == []


def test_gridctl_order_place_accepts_the_honest_answer(endorser: Endorser) -> None:  # noqa: F811
    hostile = HostileEndorser(endorser, None)
    asked = terms("meter-1", SELL, 240_000, 3000)
    _, option, envelope = request_and_accept(hostile, endorser.ids["meter-1"], asked,
                                             endorser.ledger.genesis, NOW)
    assert option.terms == asked
    endorser.submit(envelope)
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
