"""The mount's loader on its own I/O thread, so block transfers overlap the FUSE replies of the other."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from cachenode.blocks import ObjectInfo
from cachenode.client.api import AsyncClient
from cachenode.client.config import ClientConfig
from cachenode.client.files import AsyncCacheFile
from cachenode.client.iothread import LoopThread
from cachenode.source import SourceRef

T = TypeVar("T")


class OffloadedClient:
    """The calls of an AsyncClient the mount makes, awaited from the FUSE loop, run on a private
    I/O thread's loop (or on the FUSE loop itself beside a node: see __init__).

    Why: pyfuse3 answers a read with the GIL held while the kernel copies the reply into the page
    cache (fuse_reply_buf), and one asyncio thread also ran every socket read of the blocks. On
    two threads the kernel's socket copy (recv_into releases the GIL) runs while the FUSE thread
    replies. Block buffers cross threads only once filled, and are never written again.
    """

    def __init__(self, config: ClientConfig) -> None:
        # Beside a node (a local socket), blocks arrive as mappings of the node's memfds: no socket
        # copy is left to overlap, and the hop to the I/O thread and back cost more than it
        # saved (A/B, 4 interleaved rounds: 0.58x local inline, 0.50x offloaded). The loop is the
        # FUSE loop then; if the node fails, the network reads run there too.
        self._io = None if config.local_socket else LoopThread("cachenode-mount-io")
        self.client = AsyncClient(config=config)

    def parse(self, url: str, *, prefix: bool = False) -> SourceRef:
        return self.client.parse(url, prefix=prefix)

    async def run(self, coro: Awaitable[T]) -> T:
        """Run `coro` on the I/O thread (or inline); cancelling the caller cancels it there."""
        if self._io is None:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._io.loop))

    async def list(self, ref: SourceRef) -> list[tuple[SourceRef, ObjectInfo]]:
        return await self.run(self.client.list(ref))

    async def open(self, url: str) -> "OffloadedFile":
        return OffloadedFile(await self.run(self.client.open(url)), self)

    async def close(self) -> None:
        try:
            await self.run(self.client.close())
        finally:
            if self._io is not None:
                self._io.close()


class OffloadedFile:
    """An AsyncCacheFile of the I/O thread, read from the FUSE loop."""

    def __init__(self, afile: AsyncCacheFile, owner: OffloadedClient) -> None:
        self._afile = afile
        self._owner = owner
        self.name, self.etag, self.size = afile.name, afile.etag, afile.size

    async def view_at(self, offset: int, size: int) -> memoryview | None:
        return await self._owner.run(self._afile.view_at(offset, size))

    async def read_at(self, offset: int, dest: memoryview) -> int:
        return await self._owner.run(self._afile.read_at(offset, dest))

    async def close(self) -> None:
        await self._owner.run(self._afile.close())
