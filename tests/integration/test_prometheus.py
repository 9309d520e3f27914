"""A real Prometheus server (Debian's package) scrapes the devnet with the configuration
`gridctl.prometheus_config` generates and loads the shipped rules; its HTTP API shows
matching and commit latency samples from every endorser and committer."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from devnet_support import wait_for

from gridctl import devnet
from gridctl.devnet import free_port
from gridctl.prometheus_config import scrape_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus(network: devnet.Network, promtool: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    binary = shutil.which("prometheus") or str(Path(promtool).parent / "prometheus")
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(network.describe(), scrape_interval="1s")))
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address={address}"],
        stdout=subprocess.DEVNULL, stderr=open(directory / "prometheus.log", "wb"),  # noqa: SIM115
        stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://{address}/-/ready", timeout=2).status
                 == 200, 60, "prometheus to be ready")
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(base: str, expression: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    body = json.load(urllib.request.urlopen(url, timeout=10))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_rules_load(prometheus: str) -> None:
    body = json.load(urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10))
    groups = body["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert any(r["type"] == "alerting" for r in rules)
    assert any(r["type"] == "recording" for r in rules)
    assert all(r.get("health") != "err" for r in rules), [r for r in rules if r.get("lastError")]


def test_every_node_is_scraped(network: devnet.Network, prometheus: str) -> None:
    wait_for(lambda: len(query(prometheus, "up == 1")) == len(network.nodes), 60,
             "every node to be up in Prometheus")


def test_latency_histograms_have_samples_from_every_endorser_and_committer(
        network: devnet.Network, prometheus: str) -> None:
    def nodes_with_samples(metric: str) -> set[str]:
        return {r["metric"]["node"] for r in query(prometheus, f"{metric}_count > 0")}

    committers = {n.name for n in network.by_role("committer")}
    endorsers = {n.name for n in network.by_role("endorser")}
    wait_for(lambda: committers <= nodes_with_samples("gridledger_ledger_block_commit_seconds"),
             90, "commit latency samples from every committer")
    wait_for(lambda: endorsers <= nodes_with_samples("gridledger_endorser_matching_seconds"),
             120, "matching latency samples from every endorser")
