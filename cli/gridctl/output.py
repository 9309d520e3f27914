"""Tables for people, JSON for programs: every command prints through here."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    if isinstance(data, list) and columns:
        table(data, columns)
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            print(f"{key:<{width}}  {value}")
    else:
        print(data)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def fail(message: str, code: int = 1) -> None:
    print(f"gridctl: {message}", file=sys.stderr)
    raise SystemExit(code)
