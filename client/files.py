"""File objects over a BlockReader: an async one, and the sync io.RawIOBase users pass to torch."""

from __future__ import annotations

import asyncio
import io
import os

from .iothread import LoopThread
from .reader import BlockReader


# readline reads this much at a time (sequential small reads come from the readahead).
LINE_CHUNK = 64 * 1024


def _new_position(pos: int, size: int, offset: int, whence: int) -> int:
    if whence == os.SEEK_SET:
        new = offset
    elif whence == os.SEEK_CUR:
        new = pos + offset
    elif whence == os.SEEK_END:
        new = size + offset
    else:
        raise ValueError(f"invalid whence {whence!r} (use 0, 1 or 2)")
    if new < 0:
        raise ValueError(f"negative seek position {new}")
    return new


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class AsyncCacheFile:
    """Read-only, seekable async file over one pinned version of a source."""

    def __init__(self, reader: BlockReader, name: str, etag: str, via: str) -> None:
        self._reader = reader
        self.name = name
        self.etag = etag
        self.via = via  # node URL, or "origin" when bypassing
        self.size = reader.size
        self.block_size = reader.block_size
        self._pos = 0
        self.closed = False

    async def read_at(self, offset: int, dest: memoryview) -> int:
        """Fill `dest` with bytes from `offset` (the file position is not used or moved);
        whole blocks land straight in `dest`. Returns the count, short at EOF."""
        self._check()
        return await self._reader.read_into(offset, dest)

    async def view_at(self, offset: int, size: int) -> memoryview | None:
        """`size` bytes from `offset` (fewer at EOF) as a read-only view of the reader's cached
        block (no copy), or None if they span two blocks (read_at them instead)."""
        self._check()
        return await self._reader.view(offset, size)

    async def readinto(self, b) -> int:
        n = await self.read_at(self._pos, memoryview(b).cast("B"))
        self._pos += n
        return n

    async def read(self, n: int = -1) -> bytes:
        self._check()
        remaining = max(0, self.size - self._pos)
        buf = bytearray(remaining if n is None or n < 0 else min(n, remaining))
        got = await self.readinto(buf)
        return bytes(buf[:got]) if got != len(buf) else bytes(buf)

    async def readall(self) -> bytes:
        return await self.read(-1)

    async def readline(self, size: int | None = -1) -> bytes:
        """Up to and including the next b"\n" (at most `size` bytes; None or < 0: no limit),
        read a chunk at a time (never a byte at a time), the position left just after it."""
        self._check()
        limit = None if size is None or size < 0 else size
        out = bytearray()
        while limit is None or len(out) < limit:
            chunk = await self.read(LINE_CHUNK if limit is None else min(LINE_CHUNK, limit - len(out)))
            if not chunk:
                break
            end = chunk.find(b"\n") + 1
            if end:
                out += chunk[:end]
                self._pos -= len(chunk) - end  # give back what follows the line
                break
            out += chunk
        return bytes(out)

    async def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Lines until EOF, or until they add up to `hint` bytes (io's rule)."""
        lines, total = [], 0
        while line := await self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __aiter__(self) -> "AsyncCacheFile":
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check()
        self._pos = _new_position(self._pos, self.size, offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    async def close(self) -> None:
        self.closed = True
        await self._reader.aclose()

    async def __aenter__(self) -> "AsyncCacheFile":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class CacheFile(io.RawIOBase):
    """Sync, seekable, read-only file; `readinto` fills the caller's buffer directly.

    Works with torch.load(...) and anything expecting a binary file. The transfers run on the
    owning client's private I/O thread.
    """

    def __init__(self, afile: AsyncCacheFile, loop: LoopThread, on_close=None) -> None:
        super().__init__()
        self._afile = afile
        self._loop = loop
        self._on_close = on_close
        self.name = afile.name
        self.etag = afile.etag
        self.via = afile.via
        self.size = afile.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._checkClosed()
        view = memoryview(b).cast("B")
        n = self._loop.run(self._afile.read_at(self._afile.tell(), view))
        self._afile.seek(n, os.SEEK_CUR)
        return n

    def read(self, size: int | None = -1) -> bytes:
        """io's read: None or a negative size reads to the end (in one parallel read)."""
        if size is None or size < 0:
            return self.readall()
        return super().read(size)

    def readline(self, size: int | None = -1) -> bytes:
        """io's readline (and so readlines and iteration), a chunk at a time, not a byte."""
        self._checkClosed()
        return self._loop.run(self._afile.readline(size))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """io.BytesIO's readlines (IOBase's C version stops one line later on a hint)."""
        self._checkClosed()
        return self._loop.run(self._afile.readlines(hint))

    def readall(self) -> bytes:
        """The rest of the file in one parallel read (use readinto to avoid the final copy)."""
        buf = bytearray(max(0, self.size - self.tell()))
        n = self.readinto(buf)
        return bytes(buf[:n]) if n != len(buf) else bytes(buf)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        return self._afile.seek(offset, whence)

    def tell(self) -> int:
        self._checkClosed()
        return self._afile.tell()

    def close(self) -> None:
        if self.closed:
            return
        try:
            loop = self._loop.loop
            if loop.is_closed():
                pass
            elif _running_loop() is loop:
                # Closed (or garbage-collected) on the I/O loop itself: waiting would deadlock.
                loop.create_task(self._afile.close())
            else:
                self._loop.run(self._afile.close())
        finally:
            super().close()
            if self._on_close is not None:
                self._on_close()
