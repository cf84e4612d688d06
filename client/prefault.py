"""Populate a fresh destination buffer's pages on another thread, ahead of the network writes.

On VMs first-touch page faults cost as much as the network (DESIGN.md: 0.4-1.1 GB/s). Taken on
the event-loop thread they also stall every socket read. MADV_POPULATE_WRITE (Linux 5.14+)
faults pages in without touching their contents, so it is safe to run while blocks land.
"""

from __future__ import annotations

import ctypes
import threading
import time

MADV_POPULATE_WRITE = 23
PAGE = 4096
CHUNK = 32 * 1024 * 1024

_libc = None


def _madvise():
    global _libc  # a cached libc handle, not state: safe to share between nodes and clients
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    return _libc.madvise


def prefault(address: int, nbytes: int) -> threading.Thread | None:
    """Start populating [address, address+nbytes) in order, chunk by chunk; None if unsupported.
    The thread's `seconds` is how long that took, once it has ended.

    The caller must keep the buffer alive until the returned thread ends (join it, or hold the
    buffer for the load's duration, which always outlasts it).
    """
    start = (address + PAGE - 1) // PAGE * PAGE
    end = (address + nbytes) // PAGE * PAGE
    if end - start < 2 * CHUNK:
        return None
    madvise = _madvise()
    # No MADV_HUGEPAGE: with THP defrag=madvise (the common default) it makes every fault wait
    # for direct compaction once the page cache has fragmented memory: measured 1.6-3.0 s to fill
    # a fresh 1 GiB here against 0.22 s with plain 4 KiB pages (and 0.27 s populating them).

    def run() -> None:
        t0 = time.perf_counter()
        try:
            for off in range(start, end, CHUNK):
                # ctypes releases the GIL for the call, so the loop keeps running meanwhile
                if madvise(off, min(CHUNK, end - off), MADV_POPULATE_WRITE) != 0:
                    return  # older kernel (EINVAL) or no memory: the writes fault pages in themselves
        finally:
            t.seconds = time.perf_counter() - t0  # read after join() (LoadStats.first_touch_s)

    t = threading.Thread(target=run, name="cachenode-prefault", daemon=True)
    t.seconds = 0.0
    t.start()
    return t
