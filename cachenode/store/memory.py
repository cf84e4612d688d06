"""The memory tier: a byte-bounded LRU of immutable blocks."""

from __future__ import annotations

from collections import OrderedDict


class MemoryTier:
    """Blocks held in RAM, evicted least-recently-used first when over `capacity` bytes.

    Stored buffers are never mutated after insertion, so they can be handed to the HTTP layer
    without copying while another request evicts them.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._blocks: OrderedDict[str, tuple[bytes | bytearray, str]] = OrderedDict()

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
        while self.used + len(data) > self.capacity:
            _, (old, _) = self._blocks.popitem(last=False)
            self.used -= len(old)
        self._blocks[key] = (data, digest)
        self.used += len(data)
        return True

    def discard(self, key: str) -> None:
        item = self._blocks.pop(key, None)
        if item is not None:
            self.used -= len(item[0])
