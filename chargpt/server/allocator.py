"""Process-wide allocator tuning for torch servers: reuse freed tensor memory instead of unmapping it."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for the threshold on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to 32 MB in one heap for reuse; True if it took effect.

    By default glibc serves big blocks with mmap and hands freed heap tops back to the kernel, so every forward
    pass over a batch (each activation a few MB to tens of MB) page-faults its memory in afresh: ~15% of a Score
    request on a 2-core VM (bench/inference.py). Threads share the main heap, because the per-thread arenas'
    64 MB heaps are mapped and unmapped as batches of activations come and go (1.6 GB of page faults in a model
    thread's first 100k-character Score); small allocations stay lock-free in glibc's per-thread caches.
    The cost: resident memory stays at its peak instead of shrinking between requests.
    Elsewhere than on glibc (musl, macOS) this does nothing. Call it before starting threads.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1))
    applied = all(mallopt(param, value) == 1 for param, value in settings)
    log.debug("malloc keeps freed memory: %s", applied)
    return applied
