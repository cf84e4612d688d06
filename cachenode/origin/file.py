"""A local-directory origin confined to its roots: regular files only, no link leads out."""

from __future__ import annotations

import asyncio
import os
import stat as stat_mod
from typing import Iterable

from ..blocks import ObjectInfo
from ..errors import Forbidden, InvalidSource, SourceChanged, SourceNotFound
from ..source import FILE, SourceRef
from .base import Origin


def file_etag(st: os.stat_result) -> str:
    """A version tag for a local file: changes when it is rewritten or replaced."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class FileOrigin(Origin):
    """Reads regular files inside its roots; the ETag is derived from inode, mtime and size.

    A path is checked where it is opened, not as a string: the file is opened with O_PATH
    (following links, with no side effects even for a FIFO or device), the kernel's name for the
    open descriptor must lie inside the root's real path, and only a regular file is then
    reopened for reading. So no symlink (absolute, relative, or a linked directory) leads out,
    links that stay inside a root still work, and a FIFO never blocks a thread.
    """

    def __init__(self, roots: Iterable[str] = ("/",)) -> None:
        self.roots = tuple(os.path.normpath(r) for r in roots)

    def _root_of(self, path: str) -> str:
        for root in self.roots:
            if _inside(path, root):
                return root
        raise Forbidden(f"file://{path} is outside the allowed directories")

    def _open_checked(self, path: str) -> tuple[int, os.stat_result]:
        """(read descriptor, its stat) of the regular file at `path`, resolved inside its root."""
        root = self._root_of(path)
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SourceNotFound(f"file://{path} does not exist") from None
        except PermissionError:
            raise Forbidden(f"file://{path}: permission denied") from None
        except NotADirectoryError:
            raise SourceNotFound(f"file://{path} does not exist") from None
        try:
            real = os.readlink(f"/proc/self/fd/{pfd}")
            if not _inside(real, os.path.realpath(root)):
                raise Forbidden(f"file://{path} resolves outside its allowed directory {root}")
            st = os.fstat(pfd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise SourceNotFound(f"file://{path} is not a regular file")
            try:
                # Reopen the very inode we checked, not the name (which may have changed since).
                fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except PermissionError:
                raise Forbidden(f"file://{path}: permission denied") from None
        finally:
            os.close(pfd)
        return fd, os.fstat(fd)

    async def stat(self, ref: SourceRef) -> ObjectInfo:
        assert ref.kind == FILE
        return await asyncio.to_thread(self._stat, ref.path)

    def _stat(self, path: str) -> ObjectInfo:
        fd, st = self._open_checked(path)
        os.close(fd)
        return ObjectInfo(st.st_size, file_etag(st), st.st_mtime)

    async def read_into(self, ref: SourceRef, etag: str, offset: int, dest: memoryview) -> None:
        await asyncio.to_thread(self._read, ref.path, etag, offset, dest)

    def _read(self, path: str, etag: str, offset: int, dest: memoryview) -> None:
        try:
            fd, st = self._open_checked(path)
        except SourceNotFound:
            raise SourceChanged.pinned(f"file://{path}", etag, "file was removed") from None
        try:
            # Check the version on the open descriptor, so a rename-replace after this is harmless.
            if file_etag(st) != etag:
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
        """Regular files under `prefix` inside its root: a directory's whole tree, or the names
        in a directory that start with the prefix's last part. Directory links are not walked
        and file links that resolve outside the root are left out."""
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[tuple[SourceRef, ObjectInfo]]:
        root = self._root_of(prefix)
        whole = prefix.rstrip("/") or "/"
        if prefix.endswith("/") or whole == root or os.path.isdir(whole):
            base, start = whole, ""
        else:
            base, start = os.path.dirname(whole), os.path.basename(whole)
        if not _inside(base, root) or not _inside(os.path.realpath(base), os.path.realpath(root)):
            raise Forbidden(f"file://{prefix} lists outside its allowed directory {root}")
        out = []
        for top, dirs, files in os.walk(base):  # followlinks=False: linked directories are skipped
            if top == base and start:
                dirs[:] = [d for d in dirs if d.startswith(start)]
                files = [f for f in files if f.startswith(start)]
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(top, name)
                try:
                    out.append((SourceRef(FILE, "", "", full), self._stat(full)))
                except (Forbidden, SourceNotFound, InvalidSource):
                    continue  # a link out of the root, a FIFO, a file gone meanwhile, a control character
        return out
