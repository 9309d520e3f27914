"""Shared by the operations tests: the repository root, the project's console scripts, the
metric names the code exports, and the metric names in PromQL expressions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = (ROOT / "core", ROOT / "services", ROOT / "cli")

_METRIC = re.compile(r"\b(Counter|Gauge|Histogram|Info|Summary|Enum)\("
                     r"\s*[\"']([a-zA-Z_:][\w:]*)[\"']")
# What prometheus_client exposes for each metric type, from the name given in the code.
_SUFFIXES = {"Counter": ("_total", "_created"), "Gauge": ("",),
             "Histogram": ("_bucket", "_sum", "_count", "_created"), "Info": ("_info",),
             "Summary": ("", "_sum", "_count", "_created"), "Enum": ("",)}


def console_scripts() -> dict[str, str]:
    """Console script name -> `module:function`, from pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def exported_metric_names() -> set[str]:
    """Every series name the services export, from the metric definitions in the code."""
    names: set[str] = set()
    for directory in SOURCE_DIRS:
        for path in directory.rglob("*.py"):
            for kind, name in _METRIC.findall(path.read_text()):
                base = name.removesuffix("_total") if kind == "Counter" else name
                names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan"}
def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def rule_documents(rules_dir: Path) -> list[dict]:
    return [yaml.safe_load(path.read_text()) for path in sorted(rules_dir.glob("*.rules.yml"))]


def rules(rules_dir: Path) -> list[dict]:
    return [rule for doc in rule_documents(rules_dir) for group in doc["groups"]
            for rule in group["rules"]]


def recorded_names(rules_dir: Path) -> set[str]:
    return {rule["record"] for rule in rules(rules_dir) if "record" in rule}
