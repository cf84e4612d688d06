"""Random-access reads of one pinned object, block by block, with blocks in flight and readahead."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Awaitable, Callable

from cachenode.blocks import block_count

Fetch = Callable[[int, memoryview], Awaitable[None]]
# A whole block as a buffer of the channel's own (a mapping), or None: fetch into a new buffer.
FetchOwned = Callable[[int], Awaitable["memoryview | None"]]


class BlockReader:
    """Turns byte-range reads into block fetches.

    Whole blocks inside the caller's range are fetched straight into the caller's buffer (no
    copy); partial head/tail blocks go through a small cache of owned buffers that readahead
    also fills, so sequential small reads (torch.load) cost one round trip per block.
    """

    def __init__(self, fetch: Fetch, size: int, block_size: int, *, window: int = 8,
                 readahead: int = 4, on_bytes: Callable[[int], None] | None = None,
                 fetch_owned: FetchOwned | None = None) -> None:
        self._fetch = fetch
        self._fetch_mapped = fetch_owned
        self.size = size
        self.block_size = block_size
        self._window = max(1, window)
        self._readahead = max(0, readahead)
        self._on_bytes = on_bytes
        self._cache: OrderedDict[int, asyncio.Task] = OrderedDict()
        self._cache_limit = self._readahead + 2
        self._next_sequential = -1

    async def read_into(self, offset: int, dest: memoryview) -> int:
        """Fill dest with bytes from `offset`; returns the count (short at EOF, 0 past it)."""
        if offset < 0:
            raise ValueError(f"negative read offset {offset}")
        n = max(0, min(len(dest), self.size - offset))
        if n == 0:
            return 0
        bs = self.block_size
        first, last = offset // bs, (offset + n - 1) // bs
        sem = asyncio.Semaphore(self._window)

        async def one(i: int) -> None:
            start = i * bs
            length = min(bs, self.size - start)
            lo, hi = max(offset, start), min(offset + n, start + length)
            out = dest[lo - offset:hi - offset]
            if i not in self._cache and lo == start and hi == start + length:
                async with sem:
                    await self._fetch(i, out)
                self._progress(length)
                return
            # Shielded: the cached fill is shared with other reads of this file and writes only
            # into its own buffer; a failing read must not cancel a fill someone else awaits.
            buf = await asyncio.shield(self._block(i))
            out[:] = memoryview(buf)[lo - start:hi - start]

        await run_all([one(i) for i in range(first, last + 1)])
        # Readahead only serves small sequential reads (torch.load); big reads already keep a
        # window in flight, and prefetching beside them would turn direct fills into copies.
        if n < bs and offset in (0, self._next_sequential):
            self._prefetch(last + 1)
        self._next_sequential = offset + n
        return n

    async def view(self, offset: int, size: int) -> memoryview | None:
        """The `size` bytes from `offset` (fewer at EOF) as a read-only view of the cached block
        that holds them, or None if they span two blocks (use read_into then).

        For the mount: its 1 MiB replies were each a fresh buffer plus a copy out of the cached
        block. The view keeps the block's buffer alive after the cache lets go of it, and a
        cached block is never written again once its fill is done, so the bytes cannot change.
        """
        if offset < 0:
            raise ValueError(f"negative read offset {offset}")
        n = max(0, min(size, self.size - offset))
        if n == 0:
            return memoryview(b"")
        bs = self.block_size
        i = offset // bs
        if (offset + n - 1) // bs != i:
            return None
        buf = await asyncio.shield(self._block(i))  # shielded: the fill is shared (see read_into)
        # The kernel's readahead sends several requests at once and they may be served out of
        # order, so "sequential" here means near the last one (same or next block), not equal.
        if offset == 0 or 0 <= i - (self._next_sequential // bs) <= 1:
            self._prefetch(i + 1)
        self._next_sequential = offset + n
        return memoryview(buf).toreadonly()[offset - i * bs:offset - i * bs + n]

    def _block(self, i: int) -> asyncio.Task:
        task = self._cache.get(i)
        if task is None:
            task = asyncio.ensure_future(self._fetch_owned(i))
            task.add_done_callback(lambda t, i=i: self._drop_failed(i, t))
            self._cache[i] = task
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)  # awaiters keep their own reference
        else:
            self._cache.move_to_end(i)
        return task

    async def _fetch_owned(self, i: int) -> bytearray | memoryview:
        start = i * self.block_size
        length = min(self.block_size, self.size - start)
        mapped = None if self._fetch_mapped is None else await self._fetch_mapped(i)
        buf = mapped if mapped is not None else bytearray(length)
        if mapped is None:
            await self._fetch(i, memoryview(buf))
        self._progress(length)
        return buf

    def _drop_failed(self, i: int, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            if self._cache.get(i) is task:
                del self._cache[i]

    def _prefetch(self, start: int) -> None:
        for i in range(start, min(start + self._readahead, block_count(self.size, self.block_size))):
            self._block(i)

    def _progress(self, n: int) -> None:
        if self._on_bytes is not None:
            self._on_bytes(n)

    async def aclose(self) -> None:
        """Cancel the cached and readahead fills and wait until they have stopped."""
        tasks = list(self._cache.values())
        self._cache.clear()
        await cancel_and_wait(tasks)


async def run_all(coros) -> list:
    """Run `coros` concurrently; if one fails (or we are cancelled), cancel the others and wait
    for them before raising.

    Unlike gather, nothing started here outlives the call: the fetches write into the caller's
    buffer, which the caller owns again (and may reuse or free) as soon as we return or raise.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []  # asyncio.wait refuses an empty set (an index with no shards, say)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        await cancel_and_wait(tasks)
        raise
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        await cancel_and_wait(tasks)
        raise failed[0].exception()
    return [t.result() for t in tasks]


async def cancel_and_wait(tasks) -> None:
    """Cancel `tasks` and wait until every one has finished."""
    for t in tasks:
        t.cancel()
    await wait_all(tasks)


async def wait_all(tasks) -> None:
    """Wait until every one of `tasks` has finished (their errors are theirs), even if we are
    cancelled meanwhile: they may still be writing into a buffer we are about to hand back.
    A cancellation that arrived while waiting is raised afterwards."""
    if not tasks:
        return
    waiting = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
    cancelled = None
    while not waiting.done():
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
