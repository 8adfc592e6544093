"""Keep freed memory in the process heap for reuse (glibc only).

Iterative tensor code on the CPU (bundle adjustment's LM loop) allocates and frees the same
multi-megabyte temporaries every iteration. With glibc's default, adaptive thresholds many of
them are served by fresh ``mmap`` pages or trimmed off the top of the heap when freed, so the
next allocation page-faults and zero-fills them again: on the shared BAL problems that was
~50k minor page faults and ~20% of a solve. :func:`keep_freed_memory` sets glibc's mmap
threshold to its maximum (32 MiB) and its trim threshold to :data:`TRIM_THRESHOLD`, once per
process, so freed temporaries are reused. Only timing changes, never a result.

This is a process-wide setting (glibc has no per-call scope and cannot return to its adaptive
mode): the process may keep up to :data:`TRIM_THRESHOLD` of freed memory in its heap.
Elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import platform
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept before glibc returns it to the system.
TRIM_THRESHOLD = 256 << 20

_lock = threading.Lock()
_applied: bool | None = None  # None: not tried yet


def keep_freed_memory() -> bool:
    """Set the thresholds (first call only); returns whether they are in effect (glibc)."""
    global _applied
    with _lock:
        if _applied is None:
            _applied = False
            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                try:
                    lib = ctypes.CDLL(None)
                    lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    _applied = bool(
                        lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                        and lib.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                    )
                except (OSError, AttributeError):
                    _applied = False
        return _applied
