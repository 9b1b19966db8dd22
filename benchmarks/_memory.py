"""Resident memory of this process, for the benchmarks (Linux: /proc/self)."""

from __future__ import annotations

import os


def rss_mb() -> float:
    """Resident memory now, MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory (VmHWM), MB; NaN where the kernel does not report it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
