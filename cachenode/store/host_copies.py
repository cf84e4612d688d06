"""Host-local copies: sealed memfds of blocks this host's own loaders read, handed over by descriptor."""

from __future__ import annotations

import fcntl
import os
from collections import OrderedDict

from .memory import MemoryTier

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class HostCopies:
    """Blocks as sealed memfds, one per block, least-recently-used first out.

    Their bytes count against the memory tier's capacity and are the first to go when it needs
    room. A memfd is anonymous memory: it lives only while a descriptor holds it (ours, or a
    loader's for the moment of its copy), so a crashed node leaves nothing behind (no /dev/shm
    files). Sealed, so no holder can change bytes another is reading. Each descriptor holds
    exactly one block: a loader never sees another block, let alone a whole tier.
    """

    def __init__(self, memory: MemoryTier) -> None:
        self._memory = memory
        self._fds: OrderedDict[str, tuple[int, int, str]] = OrderedDict()  # key -> (fd, length, digest)
        self.used = 0
        memory.reclaim = self._shed

    def get(self, key: str) -> tuple[int, int, str] | None:
        """(fd, length, digest) of the block's copy; the fd stays ours: dup it to hand it over."""
        item = self._fds.get(key)
        if item is not None:
            self._fds.move_to_end(key)
        return item

    @staticmethod
    def make(data: bytes | bytearray | memoryview) -> int:
        """A new sealed memfd holding `data` (touches no state: may run on a worker thread)."""
        fd = os.memfd_create("cachenode-block", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def keep(self, key: str, fd: int, length: int, digest: str) -> bool:
        """Keep `fd` (made by `make`) as the block's copy if the memory budget has room; False:
        not kept, the caller closes it once sent."""
        old = self._fds.pop(key, None)
        if old is not None:
            self._drop(old)
        if not self._memory.charge(length):
            return False
        self._fds[key] = (fd, length, digest)
        self.used += length
        return True

    def _shed(self, need: int) -> int:
        """Drop least-recently-used copies until `need` bytes are freed (the memory tier's reclaim)."""
        freed = 0
        while self._fds and freed < need:
            _, item = self._fds.popitem(last=False)
            freed += self._drop(item)
        return freed

    def _drop(self, item: tuple[int, int, str]) -> int:
        fd, length, _ = item
        os.close(fd)  # a loader still copying holds its own descriptor: its bytes live until then
        self.used -= length
        self._memory.uncharge(length)
        return length

    def close(self) -> None:
        self._shed(self.used + 1)
