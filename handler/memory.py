"""Keeping a streaming process's memory flat and its page faults few.

Output frames are large strings (up to a few MB) allocated and freed thousands
of times a second. Left alone, glibc raises its mmap threshold after the first
such free, so frames come from a heap that fragments and never shrinks (a
work-horse streaming 1 GB grew to ~380 MB RSS). Forcing every large buffer into
mmap fixes that but costs a fresh zero-filled page per 4 KiB touched (about
2,000 page faults per MB in the work-horse). The middle road measured best:
buffers up to 2 MiB come from the heap and are reused, bigger ones are mapped,
and up to 16 MiB of free heap is kept rather than returned and faulted in again.
"""

from __future__ import annotations

import contextlib
import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024


def pin_malloc_thresholds(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds; False where unavailable (not glibc).

    Call it in the process that streams, right before its event loop starts: set
    at interpreter start-up it was measured to have no effect on page faults.
    """
    # The process's own symbols include libc's: no find_library(), which runs ldconfig
    # in a subprocess, a cost this pays in every work-horse.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
    return False
