"""The benchmark harness keeps working: its in-process parts run on the quick profile.
(Figures are printed and reported, never asserted: these are shared 2-core machines.)"""

from __future__ import annotations

from bench import forecast_memo, limits, matching
from bench.stats import percentile, summary_ms


def test_limits_and_matching_quick_profiles_report_figures() -> None:
    figures = limits.run("quick")
    assert figures["ed25519_verify_per_s"] > 0 and figures["lmdb_synced_commits_per_s"] > 0
    result = matching.run("quick")
    assert result["orders"] > 0 and result["trades"] > 0


def test_forecast_memo_quick_profile_agrees_with_the_direct_check() -> None:
    result = forecast_memo.run("quick")  # asserts memoised == direct allowances itself
    assert result["warm_checks_per_cpu_s"] > 0 and result["direct_checks_per_cpu_s"] > 0


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == \
        (50.0, 99.0, 100.0)
    assert summary_ms([0.001, 0.002])["max_ms"] == 2.0
