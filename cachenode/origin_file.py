"""A local-directory origin, the second implementation of the Origin interface."""

from __future__ import annotations

import asyncio
import os

from .errors import Forbidden, SourceChanged, SourceNotFound
from .origin import ObjectInfo, Origin
from .source import FILE, SourceRef


def file_etag(st: os.stat_result) -> str:
    """A version tag for a local file: changes when it is rewritten or replaced."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


class FileOrigin(Origin):
    """Reads local files; the ETag is derived from inode, mtime and size."""

    async def stat(self, ref: SourceRef) -> ObjectInfo:
        assert ref.kind == FILE
        return await asyncio.to_thread(self._stat, ref.path)

    @staticmethod
    def _stat(path: str) -> ObjectInfo:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise SourceNotFound(f"file://{path} does not exist") from None
        except PermissionError:
            raise Forbidden(f"file://{path}: permission denied") from None
        if not os.path.isfile(path):
            raise SourceNotFound(f"file://{path} is not a regular file")
        return ObjectInfo(st.st_size, file_etag(st))

    async def read_into(self, ref: SourceRef, etag: str, offset: int, dest: memoryview) -> None:
        await asyncio.to_thread(self._read, ref.path, etag, offset, dest)

    @staticmethod
    def _read(path: str, etag: str, offset: int, dest: memoryview) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise SourceChanged.pinned(f"file://{path}", etag, "file was removed") from None
        try:
            # Check the version on the open descriptor, so a rename-replace after this is harmless.
            if file_etag(os.fstat(fd)) != etag:
                raise SourceChanged.pinned(f"file://{path}", etag, "file was modified")
            got = 0
            while got < len(dest):
                n = os.preadv(fd, [dest[got:]], offset + got)
                if n == 0:
                    raise SourceChanged.pinned(f"file://{path}", etag, "file shrank")
                got += n
        finally:
            os.close(fd)

    async def list(self, ref: SourceRef, prefix: str) -> list[tuple[SourceRef, ObjectInfo]]:
        def walk():
            out = []
            base = prefix if prefix.endswith("/") else os.path.dirname(prefix)
            for root, _, files in os.walk(base or "/"):
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if full.startswith(prefix):
                        out.append((SourceRef(FILE, "", "", full), self._stat(full)))
            return out
        return await asyncio.to_thread(walk)
