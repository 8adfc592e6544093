"""CPU time that counts the work of finished child processes (e.g. SIFT workers)."""

from __future__ import annotations

import os


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended.

    ``time.process_time`` misses work done in worker processes; children count here once
    they have been waited for (our worker pools always wait for their processes).
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
