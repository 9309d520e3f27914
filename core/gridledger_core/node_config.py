"""Node configuration from flags, environment and a JSON file, in that order of precedence.

Every flag `--some-option` may also be set as GRIDLEDGER_SOME_OPTION or as "some_option" in
the file given with `--config` (or GRIDLEDGER_CONFIG).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from gridledger_core.storage.lmdb_store import DEFAULT_MAP_SIZE

ENV_PREFIX = "GRIDLEDGER_"
# In a pod where an endorser reads its committer's ledger (the manifests, `gridctl devnet up
# --containers`), the directory of the committer's volume the committer makes writable by the
# pod's group (--group-readers) for the endorser's own state: that endorser's --data-dir.
POD_ENDORSER_DIR = "endorser"


def base_parser(role: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"gridledger-{role}",
                                     description=f"GridLedger {role} node")
    parser.add_argument("--config", type=Path, help="JSON file with any of these options")
    parser.add_argument("--name", help="this node's name in the consortium (certificate CN)")
    parser.add_argument("--consortium-dir", type=Path,
                        help="directory made by `gridctl network init`")
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC address to listen on")
    parser.add_argument("--metrics-listen", default="127.0.0.1:0",
                        help="address of the Prometheus /metrics endpoint")
    parser.add_argument("--health-listen",
                        help="also serve gRPC health checking, in plaintext, on HOST:PORT "
                             "(for Kubernetes probes, which cannot present a client cert)")
    parser.add_argument("--data-dir", type=Path, help="directory for this node's LMDB data")
    parser.add_argument("--lmdb-map-gib", type=int, default=DEFAULT_MAP_SIZE >> 30,
                        help="most GiB the node's LMDB store may hold (address space reserved "
                             "at start, not disk; writes fail beyond it)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def _bounded(unit: str, name: str, low: float, high: float,
             zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)  # NaN and infinity fail the comparisons below
        if not (low <= value if zero else low < value) or value > high:
            bounds = (f"{low:g} to {high:g} {unit}" if zero
                      else f"above {low:g} and at most {high:g} {unit}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
        return value
    parse.__name__ = name  # argparse names the type in "invalid ... value"
    return parse


def milliseconds(low: float, high: float, *, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: milliseconds above `low` (or equal, with `zero`) and at most `high`."""
    return _bounded("ms", "milliseconds", low, high, zero)


def seconds(low: float, high: float, *, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: seconds above `low` (or equal, with `zero`) and at most `high`."""
    return _bounded("s", "seconds", low, high, zero)


def probability() -> Callable[[str], float]:
    """An argparse type: a probability, 0 to 1."""
    return _bounded("(a probability)", "probability", 0.0, 1.0, True)


def lmdb_map_size(args: argparse.Namespace) -> int:
    """The LMDB map size in bytes that `--lmdb-map-gib` asks for."""
    return int(args.lmdb_map_gib) << 30


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
          required: Sequence[str] = ("name", "consortium_dir", "data_dir")) -> argparse.Namespace:
    pre, _ = parser.parse_known_args(argv)
    config_path = pre.config or (Path(os.environ[ENV_PREFIX + "CONFIG"])
                                 if ENV_PREFIX + "CONFIG" in os.environ else None)
    defaults: dict[str, object] = {}
    if config_path is not None:
        defaults.update(json.loads(Path(config_path).read_text()))
    known = {action.dest: action for action in parser._actions}
    for dest, action in known.items():
        env = os.environ.get(ENV_PREFIX + dest.upper())
        if env is not None:
            defaults[dest] = env
        if dest in defaults and action.type is not None and isinstance(defaults[dest], str):
            defaults[dest] = action.type(defaults[dest])  # type: ignore[operator]
    unknown = set(defaults) - set(known)
    if unknown:
        parser.error(f"unknown options in configuration: {', '.join(sorted(unknown))}")
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    missing = [f"--{d.replace('_', '-')}" for d in required if getattr(args, d, None) is None]
    if missing:
        parser.error(f"missing required options: {', '.join(missing)}")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args


def parse_peers(values: Sequence[str], flag: str = "--orderer") -> list[tuple[str, str]]:
    """`NAME=HOST:PORT` entries (repeatable and/or comma-separated) as (name, address) pairs."""
    result = []
    for value in values:
        for item in value.split(","):
            name, _, address = item.strip().partition("=")
            if not name or not address:
                raise SystemExit(f"{flag} expects NAME=HOST:PORT, got {item!r}")
            result.append((name, address))
    return result
