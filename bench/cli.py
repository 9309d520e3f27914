"""The command line every benchmark module shares: its docstring's first line as the
description, and `--profile` over its own profiles."""

from __future__ import annotations

import argparse
from collections.abc import Iterable


def profile_parser(doc: str | None, profiles: Iterable[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--profile", choices=sorted(profiles), default="standard")
    return parser
