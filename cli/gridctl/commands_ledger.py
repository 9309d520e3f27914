"""gridctl ledger verify|backup: integrity tools over a committer's LMDB data directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from gridctl.output import emit, fail
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.audit import verify_ledger
from gridledger_core.storage import LmdbStore


def _ledger_dir(data_dir: Path) -> Path:
    path = data_dir / "ledger" if (data_dir / "ledger").is_dir() else data_dir
    if not (path / "data.mdb").exists():
        fail(f"no LMDB ledger in {data_dir} (expected {data_dir}/ledger/data.mdb)")
    return path


def _genesis(args: argparse.Namespace) -> Genesis:
    path = args.genesis
    if path is None and args.consortium_dir is not None:
        path = args.consortium_dir / "genesis.json"
    if path is None or not path.exists():
        fail("pass --genesis FILE or --consortium-dir DIR (the consortium's genesis.json)")
    return Genesis.load(path)


def cmd_verify(args: argparse.Namespace) -> None:
    genesis = _genesis(args)
    store = LmdbStore(_ledger_dir(args.data_dir), readonly=True)
    started = time.monotonic()
    try:
        with store.snapshot() as snapshot:  # one moment of a possibly running committer
            report = verify_ledger(snapshot, genesis)
    finally:
        store.close()
    result = {"ok": report.ok, "blocks_checked": report.blocks_checked,
              "transactions": report.transactions, "state_root": report.state_root.hex(),
              "seconds": round(time.monotonic() - started, 3)}
    if not report.ok:
        result |= {"problem_height": report.problem_height, "problem": report.problem}
    emit(result, args.json)
    if not report.ok:
        raise SystemExit(4)


def cmd_backup(args: argparse.Namespace) -> None:
    destination: Path = args.destination
    if destination.exists() and any(destination.iterdir()):
        fail(f"{destination} is not empty")
    store = LmdbStore(_ledger_dir(args.data_dir))
    try:
        store.copy_to(destination / "ledger")
    finally:
        store.close()
    emit({"backup": str(destination / "ledger"),
          "bytes": (destination / "ledger" / "data.mdb").stat().st_size}, args.json)


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    ledger = sub.add_parser("ledger", help="ledger integrity tools").add_subparsers(
        dest="action", required=True)
    verify = ledger.add_parser("verify", parents=[common],
                               help="re-verify a whole ledger offline (exit 4 if it fails)")
    verify.add_argument("data_dir", type=Path, help="a committer's --data-dir")
    verify.add_argument("--genesis", type=Path)
    verify.add_argument("--consortium-dir", type=Path)
    verify.set_defaults(func=cmd_verify)
    backup = ledger.add_parser("backup", parents=[common],
                               help="consistent copy of a (running) committer's LMDB")
    backup.add_argument("data_dir", type=Path)
    backup.add_argument("destination", type=Path)
    backup.set_defaults(func=cmd_backup)
