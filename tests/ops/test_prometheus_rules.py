"""Prometheus: recording and alert rules pass `promtool check rules` and their unit tests,
every alert has a firing and a quiet test case, every expression names real metrics, the
exported metrics pass `promtool check metrics`, and the devnet scrape configuration is valid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ops_support import (
    ROOT,
    exported_metric_names,
    metric_names,
    recorded_names,
    rules,
)

from gridctl.prometheus_config import default_rule_files, render, scrape_config

PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules"
TESTS = sorted((PROM / "tests").glob("*.test.yml"))


def test_rules_pass_promtool_check(promtool: str) -> None:
    files = sorted(RULES.glob("*.rules.yml"))
    assert len(files) == 2
    result = subprocess.run([promtool, "check", "rules", *map(str, files)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(promtool: str, test_file: Path) -> None:
    result = subprocess.run([promtool, "test", "rules", test_file.name], cwd=test_file.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_rule_fails_its_unit_test(promtool: str, tmp_path: Path) -> None:
    """The unit tests pin thresholds: loosen one and they fail."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "recording.rules.yml").write_text(
        (RULES / "recording.rules.yml").read_text())
    alerts = (RULES / "alerts.rules.yml").read_text()
    assert "gridledger:orderer_round_changes:increase10m > 20" in alerts
    (tmp_path / "rules" / "alerts.rules.yml").write_text(
        alerts.replace("gridledger:orderer_round_changes:increase10m > 20",
                       "gridledger:orderer_round_changes:increase10m > 100"))
    (tmp_path / "tests" / "alerts.test.yml").write_text(
        (PROM / "tests" / "alerts.test.yml").read_text())
    result = subprocess.run([promtool, "test", "rules", "alerts.test.yml"],
                            cwd=tmp_path / "tests", capture_output=True, text=True)
    assert result.returncode != 0
    assert "GridLedgerPrimaryChangesTooOften" in result.stdout + result.stderr


def _alert_cases() -> dict[str, tuple[int, int]]:
    """alertname -> (cases where it fires, cases where it must stay quiet)."""
    cases: dict[str, list[int]] = {}
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                counts = cases.setdefault(case["alertname"], [0, 0])
                counts[0 if case.get("exp_alerts") else 1] += 1
    return {name: (fire, quiet) for name, (fire, quiet) in cases.items()}


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = [rule for rule in rules(RULES) if "alert" in rule]
    assert len(alerts) >= 10
    cases = _alert_cases()
    for rule in alerts:
        fire, quiet = cases.get(rule["alert"], (0, 0))
        assert fire >= 1, f"{rule['alert']} has no test case where it fires"
        assert quiet >= 1, f"{rule['alert']} has no test case where it stays quiet"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_required_alerts_and_recordings_exist() -> None:
    names = {rule.get("alert") or rule.get("record") for rule in rules(RULES)}
    for required in ("GridLedgerNoNewBlock", "GridLedgerPrimaryChangesTooOften",
                     "GridLedgerCommittersDisagreeOnHeight",
                     "GridLedgerLedgersDisagreeOnBlockHash", "GridLedgerNodeDown",
                     "GridLedgerInvalidTransactionsSpike",
                     "quantile:gridledger_endorser_matching_seconds:histogram_quantile",
                     "role_quantile:gridledger_ledger_block_commit_seconds:histogram_quantile",
                     "gridledger:ledger_transactions_committed:rate1m"):
        assert required in names


def test_rule_expressions_use_exported_or_recorded_metrics() -> None:
    known = exported_metric_names() | recorded_names(RULES)
    for rule in rules(RULES):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"



def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.9, sum by (le, name) (rate(foo_seconds_bucket{code!="x"}[5m])'
            ' * on (job, instance) group_left (name, role) gridledger_node_info)) > bool 3'
            ' and on () max(bar offset 2m) or rec:ord:ed')
    assert metric_names(expr) == {"foo_seconds_bucket", "gridledger_node_info", "bar",
                                  "rec:ord:ed"}


def test_exported_metrics_pass_promtool_check_metrics(promtool: str) -> None:
    """Every metric object is module-level: import every service, render the default
    registry (with a child of each labelled metric) and lint it."""
    script = """
import sys
import gridledger_orderer.main, gridledger_committer.main, gridledger_endorser.main
import gridledger_meter_agent.main
from gridledger_core.rpc.server import NODE_INFO
from prometheus_client import REGISTRY, generate_latest
NODE_INFO.info({"name": "orderer-1", "role": "orderer"})
for collector in list(REGISTRY._collector_to_names):
    names = getattr(collector, "_labelnames", ())
    if names and hasattr(collector, "labels"):
        collector.labels(*["x"] * len(names))
sys.stdout.write(generate_latest().decode())
"""
    exposition = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, check=True, cwd=ROOT).stdout
    assert "gridledger_ledger_block_commit_seconds_bucket" in exposition
    assert "gridledger_orderer_round_changes_total" in exposition
    families = {line.split()[2] for line in exposition.splitlines()
                if line.startswith("# TYPE ")}
    source = exported_metric_names()
    for family in families:
        if family.startswith(("gridledger_", "grpc_server_")):
            series = {family + suffix for suffix in ("", "_total", "_info", "_bucket")}
            assert series & source, f"{family} is exported but not found in the code"
    result = subprocess.run([promtool, "check", "metrics"], input=exposition,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


NETWORK = {"consortium_dir": "/x", "nodes": [
    {"name": "orderer-2", "role": "orderer", "grpc": "127.0.0.1:7002", "metrics": "127.0.0.1:9002"},
    {"name": "orderer-1", "role": "orderer", "grpc": "127.0.0.1:7001", "metrics": "127.0.0.1:9001"},
    {"name": "committer-1", "role": "committer", "grpc": "127.0.0.1:7003",
     "metrics": "127.0.0.1:9003"},
    {"name": "endorser-1", "role": "endorser", "grpc": "127.0.0.1:7004",
     "metrics": "127.0.0.1:9004"},
    {"name": "meter-1", "role": "meter-agent", "grpc": "127.0.0.1:7005",
     "metrics": "127.0.0.1:9005"},
]}


def test_devnet_scrape_config_targets_every_node_with_labels() -> None:
    config = scrape_config(NETWORK)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert list(jobs) == ["gridledger-orderer", "gridledger-committer", "gridledger-endorser",
                          "gridledger-meter-agent"]
    targets = {tuple(sc["targets"]): sc["labels"] for job in jobs.values()
               for sc in job["static_configs"]}
    assert targets == {(n["metrics"],): {"node": n["name"], "role": n["role"]}
                       for n in NETWORK["nodes"]}
    assert [sc["labels"]["node"] for sc in jobs["gridledger-orderer"]["static_configs"]] == \
        ["orderer-1", "orderer-2"]
    assert all(job["honor_labels"] for job in jobs.values())
    assert config["rule_files"] == [str(p) for p in default_rule_files()]
    assert {Path(p).name for p in config["rule_files"]} == {"alerts.rules.yml",
                                                           "recording.rules.yml"}


def test_devnet_scrape_config_refuses_a_node_without_metrics() -> None:
    broken = {"nodes": [{"name": "orderer-1", "role": "orderer", "metrics": ""}]}
    with pytest.raises(ValueError, match="orderer-1"):
        scrape_config(broken)


def test_devnet_scrape_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    network = tmp_path / "network.json"
    network.write_text(json.dumps(NETWORK))
    out = tmp_path / "prometheus.yml"
    result = subprocess.run([sys.executable, "-m", "gridctl.prometheus_config", "--network",
                             str(network), "--output", str(out)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(render(NETWORK))
    check = subprocess.run([promtool, "check", "config", str(out)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 2 rule files found" in check.stdout
