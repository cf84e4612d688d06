"""The node's admission budgets: slots for blocks being filled or forwarded, and for background sends."""

from __future__ import annotations

import asyncio
import contextlib

# Background sends in progress at once per node (each holds one block until its last piece left).
BACKGROUND_SENDS = 8


class Budgets:
    """Built once per node and shared by the block cache (fills) and the service (forwards and
    background sends), so both draw from the same slots."""

    def __init__(self, memory_bytes: int, block_size: int, *, background_sends: int = BACKGROUND_SENDS,
                 object_puts: int = 256 << 20) -> None:
        # A block being filled (or forwarded) is not in the memory tier's budget yet: bound
        # them, so resident memory stays within --memory plus (slots x block size). Background
        # fills, which may wait seconds for bandwidth, have slots of their own and never hold
        # a loader's.
        self.slots = max(4, memory_bytes // 4 // block_size)
        self._fills = asyncio.Semaphore(self.slots)
        self._background_fills = asyncio.Semaphore(max(1, self.slots // 4))
        # Background sends hold their block for the whole paced transfer: a few at a time, so
        # the buffers they keep (disk blocks read in, forwarded and evicted ones) stay bounded.
        self._background_sends = asyncio.Semaphore(background_sends)
        # Object puts being received hold their whole batch until it is stored (nothing is
        # stored from a batch cut off mid-body): their bytes together stay under this bound,
        # whatever the number of writers; a batch waits its turn.
        self.object_puts_limit = object_puts
        self._object_bytes = 0
        self._object_room = asyncio.Condition()

    def fill_slots(self, background: bool) -> asyncio.Semaphore:
        """The slots a block being filled or forwarded takes: background traffic, which may
        wait long for bandwidth, has its own and never holds a loader's."""
        return self._background_fills if background else self._fills

    def background_sends(self) -> asyncio.Semaphore:
        """Admission of background sends (held from fetching the block to its last piece)."""
        return self._background_sends

    @contextlib.asynccontextmanager
    async def object_puts(self, n: int):
        """Admission of an object put batch of `n` bytes (one bigger than the bound goes alone)."""
        async with self._object_room:
            await self._object_room.wait_for(
                lambda: self._object_bytes == 0 or self._object_bytes + n <= self.object_puts_limit)
            self._object_bytes += n
        try:
            yield
        finally:
            async with self._object_room:
                self._object_bytes -= n
                self._object_room.notify_all()
