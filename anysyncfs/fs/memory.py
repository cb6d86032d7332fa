"""The mount process's memory: fewer glibc malloc arenas.

glibc gives each thread that meets contention on the main heap an arena of its own (up to 8 per core), and an
arena keeps what was freed in it for reuse. The mount's threads (FUSE workers, the sealing thread, the I/O pool
writing and fsyncing blobs) each allocate and free MiB-sized buffers (chunks, blobs), so each arena ends up
holding a few of them: measured on a 512 MiB sequential write, peak RSS 202 MiB with the default arenas and
161 MiB with two, for the same CPU time (docs/benchmarks.md, "Writes and memory"). Returning such buffers to the
system at once (a fixed mmap threshold) gave 129 MiB but cost 30 % more CPU in page faults, so it is not done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h
MOUNT_ARENAS = 2  # one per core of the machines this runs on; contention between more threads is brief


def limit_malloc_arenas(arenas: int = MOUNT_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before the threads start). False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, arenas))
    if not done:
        log.debug("mallopt(M_ARENA_MAX) was refused: keeping glibc's default arenas")
    return done
