"""C allocator settings for a process that builds big, short-lived buffers.

Every render makes a body of ~130 bytes per series (26 MB at 200k series) and
frees the previous one; rows, dict tables and chunk lists of a poll are as
large. glibc's malloc raises its mmap threshold to the size of the largest
block freed (up to 32 MB), so from the second render on those buffers come from
the heap, and the heap keeps what they leave behind: measured at 200k stream
series, 260 MB resident after four renders against 215 MB with the threshold
fixed, the same live data. Fixing it (``mallopt(M_MMAP_THRESHOLD)``, which
also turns the adjustment off) maps every block above it on its own, and
unmaps it when freed. Same as ``MALLOC_MMAP_THRESHOLD_=131072`` in the
environment, which an explicit setting there overrides.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, kept fixed


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc (musl, macOS) or the
    environment chose one."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return done
