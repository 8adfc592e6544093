"""CPU time that counts the work of finished child processes (e.g. SIFT workers), and how many
cores are idle right now."""

from __future__ import annotations

import os
import time


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended.

    ``time.process_time`` misses work done in worker processes; children count here once
    they have been waited for (our worker pools always wait for their processes).
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(idle, total) jiffies summed over all CPUs and the number of CPUs, from
    ``/proc/stat``; None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu")]
    except OSError:
        return None
    if not lines or lines[0][0] != "cpu":
        return None
    ticks = [int(x) for x in lines[0][1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return idle, sum(ticks[:8]), max(1, len(lines) - 1)  # guest time is counted in user


def idle_cores(sample_s: float = 0.05) -> float | None:
    """Cores of the machine that were idle over the next ``sample_s`` seconds (from
    ``/proc/stat``; None where it cannot be read, e.g. not Linux). Work in other threads of
    this process counts as busy."""
    a = _cpu_ticks()
    if a is None:
        return None
    time.sleep(sample_s)
    b = _cpu_ticks()
    if b is None or b[1] <= a[1]:
        return None
    return b[2] * (b[0] - a[0]) / (b[1] - a[1])
