"""Random-access reads of one pinned object, block by block, with blocks in flight and readahead."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Awaitable, Callable

from cachenode.blocks import block_count

Fetch = Callable[[int, memoryview], Awaitable[None]]


class BlockReader:
    """Turns byte-range reads into block fetches.

    Whole blocks inside the caller's range are fetched straight into the caller's buffer (no
    copy); partial head/tail blocks go through a small cache of owned buffers that readahead
    also fills, so sequential small reads (torch.load) cost one round trip per block.
    """

    def __init__(self, fetch: Fetch, size: int, block_size: int, *, window: int = 8,
                 readahead: int = 4, on_bytes: Callable[[int], None] | None = None) -> None:
        self._fetch = fetch
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
            buf = await self._block(i)
            out[:] = memoryview(buf)[lo - start:hi - start]

        await asyncio.gather(*(one(i) for i in range(first, last + 1)))
        # Readahead only serves small sequential reads (torch.load); big reads already keep a
        # window in flight, and prefetching beside them would turn direct fills into copies.
        if n < bs and offset in (0, self._next_sequential):
            self._prefetch(last + 1)
        self._next_sequential = offset + n
        return n

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

    async def _fetch_owned(self, i: int) -> bytearray:
        start = i * self.block_size
        buf = bytearray(min(self.block_size, self.size - start))
        await self._fetch(i, memoryview(buf))
        self._progress(len(buf))
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

    def cancel(self) -> None:
        for task in self._cache.values():
            task.cancel()
        self._cache.clear()
