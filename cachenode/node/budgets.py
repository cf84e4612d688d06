"""The node's admission budgets: slots for blocks being filled or forwarded, and for background sends."""

from __future__ import annotations

import asyncio

# Background sends in progress at once per node (each holds one block until its last piece left).
BACKGROUND_SENDS = 8


class Budgets:
    """Built once per node and shared by the block cache (fills) and the service (forwards and
    background sends), so both draw from the same slots."""

    def __init__(self, memory_bytes: int, block_size: int, *, background_sends: int = BACKGROUND_SENDS) -> None:
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

    def fill_slots(self, background: bool) -> asyncio.Semaphore:
        """The slots a block being filled or forwarded takes: background traffic, which may
        wait long for bandwidth, has its own and never holds a loader's."""
        return self._background_fills if background else self._fills

    def background_sends(self) -> asyncio.Semaphore:
        """Admission of background sends (held from fetching the block to its last piece)."""
        return self._background_sends
