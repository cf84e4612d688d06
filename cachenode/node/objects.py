"""The node's object store: immutable objects without origin, in a memory LRU over a disk LRU of their own."""

from __future__ import annotations

import asyncio
import logging

from ..objects import EXISTS, STORED
from ..store.disk import DiskFull, DiskTier
from ..store.memory import MemoryTier

log = logging.getLogger("cachenode.objects")


class ObjectStore:
    """Objects by store key (cachenode.objects.object_key: namespace and key hashed together).

    Its tiers are not the block cache's: their budgets are --object-memory and --object-disk, so
    however many objects arrive, they evict only objects, never a checkpoint block.

    First writer wins: `put` runs on the event loop without awaiting between the presence check
    and the insert, so of two concurrent puts of one key exactly one stores its (whole, digest
    checked) bytes and the other is told "exists". An object whose disk write is still running is
    held in `_pending` meanwhile, so it stays visible (and a second writer is still refused) even
    if the memory tier evicted it before its file was in place.
    """

    def __init__(self, memory: MemoryTier, disk: DiskTier | None) -> None:
        self.memory = memory
        self.disk = disk
        self._pending: dict[str, tuple[bytes | bytearray, str]] = {}
        self._writes: set[asyncio.Task] = set()
        self._deleted_while_writing: set[str] = set()
        self.disk_full = 0

    async def start(self) -> int:
        """Rebuild the disk index (objects written before a restart are served again)."""
        if self.disk is None:
            return 0
        return await asyncio.to_thread(self.disk.rebuild)

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self.disk is not None:
            await asyncio.to_thread(self.disk.close)

    def has(self, skey: str) -> bool:
        return (self.memory.get(skey) is not None or skey in self._pending
                or (self.disk is not None and self.disk.get(skey) is not None))

    def put(self, skey: str, data: bytes | bytearray, dg: str) -> str:
        """Store one whole, checked object unless the key holds one already: STORED or EXISTS.
        `data` is never mutated afterwards (it is shared with responses)."""
        if self.has(skey):
            return EXISTS
        self.memory.put(skey, data, dg)
        if self.disk is not None and len(data) <= self.disk.capacity:
            self._pending[skey] = (data, dg)
            task = asyncio.ensure_future(self._write(skey, data, dg))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return STORED

    async def get(self, skey: str) -> tuple[bytes | bytearray, str] | None:
        """(bytes, digest) or None. A disk copy is checked against its digest as it is read (a
        rotted file is dropped: a miss, never wrong bytes) and goes back into memory."""
        item = self.memory.get(skey) or self._pending.get(skey)
        if item is not None or self.disk is None or self.disk.get(skey) is None:
            return item
        data = await self.disk.read_verified(skey)
        if data is None:
            log.warning("dropped corrupt object file %s", skey)
            return None
        entry = self.disk.get(skey)
        if entry is None:  # deleted while we read it
            return None
        self.memory.put(skey, data, entry.digest)
        return data, entry.digest

    def delete(self, skey: str) -> bool:
        """Remove the object from every tier; True if it was there."""
        found = self.has(skey)
        self.memory.discard(skey)
        if self._pending.pop(skey, None) is not None:
            self._deleted_while_writing.add(skey)  # its file lands after us: removed then
        if self.disk is not None:
            self.disk.discard(skey)
        return found

    async def _write(self, skey: str, data, dg: str) -> None:
        try:
            await self.disk.write(skey, data, dg)
        except DiskFull:
            self.disk_full += 1
        except OSError as exc:
            log.warning("could not keep object %s on disk: %s", skey, exc)
        finally:
            if self._pending.get(skey, (None,))[0] is data:  # not a later put of the same key
                del self._pending[skey]
            if skey in self._deleted_while_writing:
                self._deleted_while_writing.discard(skey)
                self.disk.discard(skey)
