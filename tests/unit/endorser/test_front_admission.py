"""What an endorser front judges before a call's request arrives (front.py's Admission, as
authz.py's interceptor does on one process): the caller's certificate must chain to a
member's TLS CA, and each member holds at most its share of the front's calls, so one
member that opens calls and never sends their requests cannot take the front from the
others."""

from __future__ import annotations

from pathlib import Path

import grpc

from gridledger_core.genesis import Genesis
from gridledger_endorser.front import Admission

OPTIONS = "/gridledger.endorser.v1.EndorserService/RequestOptions"
BATCH = "/gridledger.endorser.v1.EndorserService/SubmitBatch"


def _pem(consortium_dir: Path, name: str) -> bytes:
    return (consortium_dir / "nodes" / name / "tls.pem").read_bytes()


def test_a_member_beyond_its_share_is_refused_with_a_hint_and_the_others_are_not(
        consortium_dir: Path, genesis: Genesis) -> None:
    admission = Admission(genesis, calls_per_member=2)
    utility = _pem(consortium_dir, "utility-admin")
    community = _pem(consortium_dir, "community-admin")
    assert admission.enter(OPTIONS, utility) == ("utility", None)
    assert admission.enter(OPTIONS, utility) == ("utility", None)
    member, refusal = admission.enter(OPTIONS, utility)
    assert member is None and refusal is not None
    assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert refusal.details.startswith("EndorserService/RequestOptions: ")
    assert [(t.key, t.value) for t in refusal.trailing_metadata] == [
        ("retry-after-ms", b"200")]
    assert admission.enter(OPTIONS, community) == ("community", None)
    admission.shares.leave("utility")
    assert admission.enter(BATCH, utility) == ("utility", None)


def test_a_certificate_of_no_member_or_none_is_refused_by_name(genesis: Genesis) -> None:
    admission = Admission(genesis, calls_per_member=2)
    for pem in (b"", b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n"):
        member, refusal = admission.enter(OPTIONS, pem)
        assert member is None and refusal is not None
        assert refusal.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert refusal.details.startswith("EndorserService/RequestOptions: ")


def test_the_fronts_refusals_are_counted_for_its_report(
        consortium_dir: Path, genesis: Genesis) -> None:
    """What the front refuses at admission is counted, by member for a share, for its
    report to the endorser (front.py's Refusals), and counted afresh once taken."""
    admission = Admission(genesis, calls_per_member=1)
    utility = _pem(consortium_dir, "utility-admin")
    assert admission.enter(OPTIONS, utility) == ("utility", None)
    admission.enter(OPTIONS, utility)  # beyond its share
    admission.enter(OPTIONS, b"")  # no member's certificate
    report = admission.refusals.take()
    assert report is not None
    assert dict(report.member_share_by_member) == {"utility": 1}
    assert (report.not_a_member, report.front_full, report.relay_down) == (1, 0, 0)
    assert admission.refusals.take() is None
