"""The FUSE operations of `cachenode mount`: a read-only tree whose reads go through the cluster loader."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3

from cachenode.errors import CacheError, SourceChanged, SourceNotFound

from .namespace import Entry, Namespace
from .offload import OffloadedClient, OffloadedFile

log = logging.getLogger(__name__)
XATTR_URL = b"user.cachenode.url"
XATTR_ETAG = b"user.cachenode.etag"


@dataclass
class _Pinned:
    """One version (ETag) of one file, shared by every open handle of it: blocks the kernel asks
    for through any handle are fetched once (the page cache then serves the other processes)."""

    inode: int
    file: OffloadedFile
    refs: int = 1
    reported: bool = False  # the "replaced while open" line is logged once per version


class CacheFS(pyfuse3.Operations):
    """Directories are containers and blob-name prefixes, files are blobs (read-only)."""

    def __init__(self, namespace: Namespace, client: OffloadedClient, *, attr_timeout: float,
                 uid: int | None = None, gid: int | None = None, on_init=None) -> None:
        super().__init__()
        self._on_init = on_init
        self._mounted_ns = time.time_ns()  # directories have no time of their own in blob storage
        self.ns = namespace
        self.client = client
        self.attr_timeout = attr_timeout
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._pinned: dict[tuple[int, str], _Pinned] = {}
        self._handles: dict[int, _Pinned] = {}
        self._fh = itertools.count(1)
        # The ETag each inode was last opened at: the kernel's page cache holds that version's
        # bytes, kept across opens while it stays the newest and dropped when it changes.
        self._current: dict[int, str] = {}

    def init(self) -> None:
        # Called while the kernel's INIT request is answered; the kernel applies its reply
        # (which resets the mount's readahead) right after, so per-mount tuning runs next.
        if self._on_init is not None:
            asyncio.get_running_loop().call_soon(self._on_init)

    # -- attributes ---------------------------------------------------------------------------

    def _attrs(self, inode: int, e: Entry) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = self.attr_timeout
        a.attr_timeout = self.attr_timeout
        a.st_uid, a.st_gid = self.uid, self.gid
        if e.is_dir:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
            a.st_size = 0
            mtime = self._mounted_ns
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = e.info.size
            mtime = int((e.info.modified or 0) * 1e9)
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = mtime
        a.st_blksize = 1 << 20  # a hint for tools that size their reads by it (cp, cat)
        a.st_blocks = (a.st_size + 511) // 512
        return a

    def _entry(self, inode: int) -> Entry:
        e = self.ns.entry(inode)
        if e is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return e

    async def lookup(self, parent_inode, name, ctx=None):
        found = await self._listed(self.ns.lookup(parent_inode, os.fsdecode(name)))
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(*found)

    async def getattr(self, inode, ctx=None):
        return self._attrs(inode, self._entry(inode))

    async def _listed(self, coro):
        try:
            return await coro
        except (CacheError, OSError) as exc:
            log.error("listing through the cache nodes failed: %s", exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, inode, ctx):
        if not self._entry(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        children = await self._listed(self.ns.children(fh))
        # start_id is the index after the last entry the kernel took (entries are sorted).
        for i, (name, inode, e) in enumerate(children[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(inode, e), i):
                break

    # -- files ---------------------------------------------------------------------------------

    async def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        e = self._entry(inode)
        if e.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            f = await self.client.open(e.url)  # stats the blob: pins its ETag now
        except SourceNotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except (CacheError, OSError) as exc:
            log.error("open %s failed: %s", e.url, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        key = (inode, f.etag)
        pinned = self._pinned.get(key)
        if pinned is not None:
            pinned.refs += 1
            await f.close()
        else:
            pinned = self._pinned[key] = _Pinned(inode, f)
        # Drop the kernel's pages only when they may hold another version. Not on the first open:
        # nothing can be cached yet, and the opener that applies a "drop" reply may wake after
        # a concurrent opener has already read pages (2 cores under load): they were read twice.
        previous = self._current.get(inode)
        keep = previous is None or previous == f.etag
        self._current[inode] = f.etag
        if f.etag != e.info.etag or f.size != e.info.size:
            self.ns.update(inode, type(e.info)(f.size, f.etag, e.info.modified))
        fh = next(self._fh)
        self._handles[fh] = pinned
        # direct_io stays off: reads go through the page cache, so mmap works and other
        # processes reading the same version share the pages.
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    async def read(self, fh, off, size):
        pinned = self._handles[fh]
        f = pinned.file
        if self._current.get(pinned.inode) != f.etag:
            # A newer version was opened since: this handle's bytes would land in the same page
            # cache the new version's readers use, so refuse rather than mix versions.
            self._replaced(pinned, "a newer version was opened")
        want = min(size, max(0, f.size - off))
        try:
            # The reply is a view of the cached block: no buffer and no copy per request (the
            # kernel copies it into the page cache anyway). A range across blocks (unaligned,
            # or blocks smaller than the request) is assembled in a buffer: a short reply
            # would read as EOF.
            view = await f.view_at(off, want)
            if view is not None:
                return view
            buf = bytearray(want)
            n = await f.read_at(off, memoryview(buf))
        except SourceChanged as exc:
            self._replaced(pinned, str(exc))
        except (CacheError, OSError) as exc:
            log.error("read of %s at %d (%d bytes) failed: %s", f.name, off, size, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return memoryview(buf)[:n] if n != len(buf) else buf

    def _replaced(self, pinned: _Pinned, why: str):
        if not pinned.reported:
            pinned.reported = True
            log.error("%s was replaced while open (opened at ETag %s; %s): reads of this open file "
                      "fail with EIO, open it again to read the new version",
                      pinned.file.name, pinned.file.etag, why)
        raise pyfuse3.FUSEError(errno.EIO)

    async def release(self, fh):
        pinned = self._handles.pop(fh)
        pinned.refs -= 1
        if pinned.refs == 0:
            key = (pinned.inode, pinned.file.etag)
            if self._pinned.get(key) is pinned:
                del self._pinned[key]
            await pinned.file.close()

    # -- extended attributes, statfs -----------------------------------------------------------

    async def listxattr(self, inode, ctx):
        return [] if self._entry(inode).is_dir else [XATTR_URL, XATTR_ETAG]

    async def getxattr(self, inode, name, ctx):
        e = self._entry(inode)
        if not e.is_dir:
            if name == XATTR_URL:
                return e.url.encode()
            if name == XATTR_ETAG:
                return e.info.etag.encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 1 << 20
        s.f_namemax = 1024
        return s

    async def close(self) -> None:
        """Close every pinned file (at unmount)."""
        for pinned in list(self._pinned.values()):
            await pinned.file.close()
        self._pinned.clear()
        self._handles.clear()
