"""The end-to-end benchmark harness on its quick profile: a real devnet under meter load.
Figures are printed, never asserted (shared 2-core machines); what is asserted is that the
harness measured something and that no acknowledged transaction went missing."""

from __future__ import annotations

import json
from pathlib import Path

from bench import end_to_end


def test_quick_profile_runs_the_network_and_reports_every_figure(tmp_path: Path) -> None:
    chart = tmp_path / "e2e.png"
    report = end_to_end.run("quick", directory=tmp_path / "net", chart_path=chart)
    json.dumps(report)  # the report is what `make bench` writes
    assert report["network"] == {"orderer": 4, "committer": 2, "endorser": 1}
    assert list(report["phases"]) == ["max_rate", "max_rate_batch_api", "fixed_rate",
                                      "rate_70pct_of_max", "max_rate_before_2x",
                                      "overload_2x_max"]
    (pair,) = report["overload_share"]["pairs"]  # the quick profile runs one pair
    assert pair["max_rate_tx_per_s"] == \
        report["phases"]["max_rate_before_2x"]["committed_valid_tx_per_s"]
    for name in report["phases"]:
        phase = report["phases"][name]
        assert phase["committed_valid_tx_per_s"] > 0
        assert phase["all_acknowledged_committed"] and phase["unaccounted"] == 0
        assert phase["acknowledged_resent"] is not None  # scraped from the endorser
        assert phase["submit_to_commit_ms"]["p99"] is not None
        assert set(phase["cpu_ms_per_committed_tx"]) == {"orderer", "committer", "endorser"}
        assert phase["sent_by_kind"].get("reading") and phase["sent_by_kind"].get("order")
        assert 0 <= phase["refused_share"] <= 1
        # Trade requests are stamped when sent: none is stale at the endorser (--request-window).
        assert not [r for r in phase["rejected"] if "was made at" in r], phase["rejected"]
    assert report["phases"]["fixed_rate"]["sent_by_kind"].get("contract")
    assert report["phases"]["fixed_rate"]["matching_ms"]["samples"] > 0
    assert all(v > 0 for v in report["peak_rss_mib"].values())
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
