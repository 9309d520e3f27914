"""The allocator settings that keep a flood's freed buffers from staying resident (glibc)."""

from __future__ import annotations

from pathlib import Path

from gridledger_orderer import memory


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_large_freed_buffers_leave_the_resident_set() -> None:
    assert memory.tune_allocator()  # this machine's libc is glibc
    before = _rss_kib()
    buffers = [bytearray(4 << 20) for _ in range(32)]  # 128 MiB, touched
    assert _rss_kib() - before > 100 << 10
    del buffers
    memory.trim()
    assert _rss_kib() - before < 16 << 10
