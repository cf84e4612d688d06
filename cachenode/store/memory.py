"""The memory tier: a byte-bounded LRU of immutable blocks."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class MemoryTier:
    """Blocks held in RAM, evicted least-recently-used first when over `capacity` bytes.

    Stored buffers are never mutated after insertion, so they can be handed to the HTTP layer
    without copying while another request evicts them.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._blocks: OrderedDict[str, tuple[bytes | bytearray, str]] = OrderedDict()
        # Frees up to n bytes held beside the blocks (host-local copies, which go first); returns
        # what it freed. Set by whoever charges such bytes here (HostCopies).
        self.reclaim: Callable[[int], int] | None = None

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, key: str) -> tuple[bytes | bytearray, str] | None:
        item = self._blocks.get(key)
        if item is not None:
            self._blocks.move_to_end(key)
        return item

    def put(self, key: str, data: bytes | bytearray, digest: str) -> bool:
        """Insert a block; False if it cannot fit even in an empty tier."""
        if len(data) > self.capacity:
            return False
        self.discard(key)
        self._make_room(len(data))
        self._blocks[key] = (data, digest)
        self.used += len(data)
        return True

    def charge(self, n: int) -> bool:
        """Count `n` bytes held outside the tier (a host-local copy) against its capacity,
        making room as put does; False (nothing charged) if they cannot fit."""
        if n > self.capacity:
            return False
        self._make_room(n)
        self.used += n
        return True

    def uncharge(self, n: int) -> None:
        self.used -= n

    def _make_room(self, n: int) -> None:
        # Host-local copies go first: they are second copies of blocks, the tier's are the cache.
        while self.used + n > self.capacity:
            if self.reclaim is not None and self.reclaim(self.used + n - self.capacity) > 0:
                continue
            if not self._blocks:
                return  # only charged bytes left, and none reclaimable: over by their holders
            _, (old, _) = self._blocks.popitem(last=False)
            self.used -= len(old)

    def discard(self, key: str) -> None:
        item = self._blocks.pop(key, None)
        if item is not None:
            self.used -= len(item[0])
