"""A Prometheus configuration for a devnet: `python -m gridctl.prometheus_config`.

Turns the devnet's `network.json` (see `gridctl.devnet`) into a prometheus.yml that scrapes
every node's /metrics endpoint as a static target labelled with the node's name (`node`) and
role (`role`), one job per role, and loads the rule files in deploy/prometheus/rules. The
rules themselves identify nodes through `gridledger_node_info{name, role}`; `honor_labels`
keeps that series' own `role` label instead of renaming it to `exported_role`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
ROLE_ORDER = ("orderer", "committer", "endorser", "meter-agent")


def default_rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.rules.yml"))


def scrape_config(network: dict, rule_files: Iterable[Path] | None = None,
                  scrape_interval: str = "5s") -> dict:
    """The prometheus.yml document (as a dict) for a network description."""
    by_role: dict[str, list[dict]] = {}
    for node in network["nodes"]:
        if not node.get("metrics"):
            raise ValueError(f"node {node.get('name')!r} has no metrics address")
        by_role.setdefault(node["role"], []).append(
            {"targets": [node["metrics"]], "labels": {"node": node["name"],
                                                      "role": node["role"]}})
    roles = sorted(by_role, key=lambda r: (ROLE_ORDER.index(r) if r in ROLE_ORDER
                                           else len(ROLE_ORDER), r))
    files = default_rule_files() if rule_files is None else list(rule_files)
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "external_labels": {"network": "gridledger-devnet"}},
        "rule_files": [str(Path(f).resolve()) for f in files],
        "scrape_configs": [{"job_name": f"gridledger-{role}", "honor_labels": True,
                            "metrics_path": "/metrics",
                            "static_configs": sorted(by_role[role],
                                                     key=lambda c: c["labels"]["node"])}
                           for role in roles],
    }


def render(network: dict, rule_files: Iterable[Path] | None = None,
           scrape_interval: str = "5s") -> str:
    return yaml.safe_dump(scrape_config(network, rule_files, scrape_interval), sort_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridctl.prometheus_config",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--network", type=Path, default=Path(".devnet/network.json"),
                        help="the devnet's network.json (default: .devnet/network.json)")
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    if not args.network.exists():
        print(f"no {args.network}; start a devnet with `gridctl devnet up --detach`",
              file=sys.stderr)
        return 1
    text = render(json.loads(args.network.read_text()), scrape_interval=args.scrape_interval)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
