"""Block buffers the memory tier keeps: placed mid-page, away from the loaders' buffer offsets."""

from __future__ import annotations

import ctypes
import mmap

PAGE = 4096
HUGE_PAGE = 2 * 1024 * 1024
# Where a block's first byte sits within its 4 KiB page. The kernel copies a block into a
# loader's buffer (UCX over shared memory: cma, process_vm_readv) with `rep movsb`, and on
# this VM's AMD EPYC that copy runs at 2.5 GB/s instead of 6-7.5 whenever the destination
# sits 1-31 bytes past the source within a page (measured for every offset: 4 KiB aliasing).
# Loaders' buffers start at a page (mmap, pinned memory) or 16-64 bytes into one (malloc,
# bytearray, numpy, torch), so a block at the start of a page (mmap) or 16 bytes in (a
# bytearray) hits that window for the common ones; half a page in is far from all of them.
BLOCK_PAGE_OFFSET = 2048
# Below this a block keeps plain memory: the page of slack would be a noticeable share.
MIN_PLACED = 64 * 1024


def block_buffer(n: int) -> memoryview:
    """A zeroed, writable buffer of `n` bytes for a block the node keeps and serves.

    From `HUGE_PAGE` up it is a private mapping of its own (freed whole when dropped). No
    MADV_HUGEPAGE: huge pages would save the kernel's pinning of 4 KiB source pages on UCX over
    shared memory (a fifth of that copy), but with THP defrag=madvise (the usual setting) every
    fault of such a block may wait for direct compaction once the page cache has fragmented
    memory: filling 512 MiB of blocks took 1.15 s against 0.32 s in plain pages, measured here
    after a test run, and that is the cold path's time (cachenode/client/prefault.py measured
    the same for loaders). Either way the block starts BLOCK_PAGE_OFFSET bytes into a page; the
    memory budget counts `n`, the page of slack is not counted.
    """
    if n < MIN_PLACED:
        return memoryview(bytearray(n))
    if n >= HUGE_PAGE:
        m = mmap.mmap(-1, n + PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return memoryview(m)[BLOCK_PAGE_OFFSET:BLOCK_PAGE_OFFSET + n]
    buf = bytearray(n + PAGE)
    start = (BLOCK_PAGE_OFFSET - address_of(buf)) % PAGE
    return memoryview(buf)[start:start + n]


def address_of(buf) -> int:
    """The address of a writable buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))
