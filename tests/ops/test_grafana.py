"""The Grafana dashboard: valid JSON, the data source as a variable used by every panel and
query, the panels the issue asks for, and every expression names metrics the services
export or the recording rules record."""

from __future__ import annotations

import json

import pytest
from ops_support import (
    ROOT,
    exported_metric_names,
    metric_names,
    recorded_names,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "gridledger.json"
RULES = ROOT / "deploy" / "prometheus" / "rules"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in _panels(dashboard)
            for target in panel.get("targets", [])]


def test_data_source_is_a_variable_used_everywhere(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, \
            panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    text = DASHBOARD.read_text()
    assert '"uid": "prometheus"' not in text and "DS_PROMETHEUS" not in text


def test_every_expression_uses_exported_or_recorded_metrics(dashboard: dict) -> None:
    known = exported_metric_names() | recorded_names(RULES)
    queries = _queries(dashboard)
    assert len(queries) >= 25
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert not names - known, f"{title}: unknown metrics {names - known}"


def test_a_misspelt_metric_would_be_caught() -> None:
    known = exported_metric_names()
    assert "gridledger_ledger_height" in known
    assert metric_names("max(gridledger_ledger_hieght)") - known == {"gridledger_ledger_hieght"}


def test_required_panels(dashboard: dict) -> None:
    by_title = {panel["title"]: panel for panel in _panels(dashboard)}
    exprs = {title: " ".join(t["expr"] for t in panel.get("targets", []))
             for title, panel in by_title.items()}
    required = {
        "Committed transactions per second": "gridledger:ledger_transactions_committed:rate1m",
        "Matching latency (endorser)":
            "quantile:gridledger_endorser_matching_seconds:histogram_quantile",
        "Block commit latency (committers)":
            "role_quantile:gridledger_ledger_block_commit_seconds:histogram_quantile",
        "Height per node": "name_role:gridledger_ledger_height:max",
        "Primary per orderer": "gridledger_orderer_is_primary",
        "Round changes (primary changes)": "gridledger_orderer_round_changes_total",
        "Invalid transactions by code": 'code!="valid"',
        "Readings (meter agents)": "gridledger_meter_readings_created_total",
        "Trades and supply contracts": "gridledger_meter_contracts_total",
        "Settled energy per hour": "gridledger_settlement_energy_wh_total",
        "Money moved per hour": "gridledger_money_moved_micro_total",
        "Imbalance of the last settled slot": "gridledger_settlement_last_slot_energy_wh",
    }
    for title, fragment in required.items():
        assert title in by_title, f"missing panel {title!r}"
        assert fragment in exprs[title], title


def test_layout_is_well_formed(dashboard: dict) -> None:
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"] == "GridLedger"
    occupied: set[tuple[int, int]] = set()
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
    for panel in _panels(dashboard):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
