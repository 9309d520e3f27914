"""Where each role's CPU goes under load: py-spy samples every node process during the
measured window, keeping only the thread that holds the GIL (Python running, or C code
called without releasing it, as protobuf's parsing is; an fsync or a wait on the network
releases it and does not count). The collapsed stacks are summarised per role as the
functions holding the most samples (self) and the most stacks (inclusive).

Ed25519 verification (libsodium through PyNaCl's cffi bindings) releases the GIL, so these
profiles show only its Python wrapper: a commit replay sampled without `--gil` puts 37 % of
a committer's commit CPU in `crypto_sign_open` where the GIL profile of the live committer
shows 5 % (docs/performance.md, twenty-second round). Read a role's share of signature
checks from the commit replay or from `--gil`-less samples, not from here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from gridctl import devnet

RATE = 97  # samples per second: not a multiple of common timer frequencies
TOP = 12
# Frames every thread has; they say nothing about where the time goes.
BORING = re.compile(r"^(\w+\.)?(_bootstrap|_bootstrap_inner|run|_worker|<module>|"
                    r"_run_module_as_main|_run_code|wait|main|_WorkItem.run) ")


def available() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def start(nodes: Sequence[devnet.Node], seconds: float, out: Path) -> list[subprocess.Popen]:
    """One py-spy per node, recording collapsed stacks of every thread for `seconds`."""
    binary = available()
    if binary is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(
        [binary, "record", "--pid", str(node.pid), "--duration", str(max(1, int(seconds))),
         "--rate", str(RATE), "--format", "raw", "--nonblocking", "--gil",
         "--output", str(out / f"{node.name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for node in nodes]


def finish(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _frame(frame: str) -> str:
    """'function (path/to/file.py:123)' -> 'function (file.py)'."""
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({Path(match.group(2)).name})"


def summarise(files: Sequence[Path]) -> dict:
    """Samples, and the top functions by self and by inclusive share of them, for one
    role's files."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = 0
    for path in files:
        if not path.exists():
            continue
        # py-spy's nonblocking sampler can read a frame's name mid-update: such bytes are
        # not UTF-8, and one of them must not lose a whole run's report.
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame(f) for f in stack.split(";")]
            busy += count
            own[frames[-1]] += count
            for frame in set(frames):
                if not BORING.match(frame):
                    inclusive[frame] += count
    share = (lambda n: round(n / busy, 3)) if busy else (lambda n: 0.0)
    return {"samples": busy,
            "self": [(f, share(n)) for f, n in own.most_common(TOP)],
            "inclusive": [(f, share(n)) for f, n in inclusive.most_common(TOP)]}


def by_role(nodes: Sequence[devnet.Node], out: Path) -> dict[str, dict]:
    roles: dict[str, list[Path]] = {}
    for node in nodes:
        roles.setdefault(node.role, []).append(out / f"{node.name}.txt")
    return {role: summarise(files) for role, files in sorted(roles.items())}


def lines(profile: dict[str, dict]) -> list[str]:
    out = []
    for role, summary in profile.items():
        out.append(f"  {role}s ({summary['samples']} samples with the GIL), self: " + "; ".join(
            f"{share:.0%} {name}" for name, share in summary["self"][:6]))
    return out
