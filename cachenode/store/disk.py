"""The disk tier: one file per block, named by key, digest and length, bounded LRU, rebuilt at start."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..blocks import digest as block_digest
from .buffers import block_buffer

# <key>-<digest>-<length in hex>: the length in the name finds a truncated file at start.
_NAME_RE = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{32})-([0-9a-f]{1,16})$")


class DiskFull(OSError):
    """The cache directory has no room; the block is served without being cached."""


@dataclass
class DiskEntry:
    path: str
    length: int
    digest: str
    verified: bool  # digest checked against the bytes since this process started


class DiskTier:
    """Blocks as files `<root>/<key[:2]>/<key>-<digest>-<length>`.

    Writes go to a temp name and are renamed into place, so a crash leaves either nothing or a
    whole file; a torn or rotted file is caught by the digest in its name, a truncated one by
    its length at start. No fsync: a block lost in a power cut is simply fetched again, and the
    digest rejects a partial one. Bytes being written count against the capacity from the
    moment the write starts, so the directory never holds more than `capacity`.
    """

    def __init__(self, root: str, capacity: int, *, on_held_eviction: Callable[[], None] | None = None) -> None:
        self.root = root
        self.capacity = capacity
        self.used = 0
        self._index: OrderedDict[str, DiskEntry] = OrderedDict()
        self._tmp = os.path.join(root, "tmp")
        self.dropped = 0  # files removed at start: strangers, truncated
        # Block files handed out open (path -> holders). Evicting one unlinks its name, but
        # its bytes stay on the disk until the last holder closes it, so they stay counted
        # in `used` until then (path -> length in `_held_evicted`).
        self._holders: dict[str, int] = {}
        self._held_evicted: dict[str, int] = {}
        self.evicted_while_held = 0  # evictions of a file some transport was still sending
        self._on_held_eviction = on_held_eviction
        # One writer thread at the lowest CPU priority. Writing a block into the page cache
        # costs this VM about 2 CPU-s per GB (fresh page-cache pages fault like fresh memory),
        # and a cold load's fills happen while the loader, the other nodes and the origin want
        # the same two cores: measured, the disk tier was 40% of the nodes' CPU during a cold
        # 512 MiB load, and a cold load took 0.87x blob direct's speed (median of 4 interleaved
        # rounds) with the writes at normal priority, 1.15x at nice 19 (README, Benchmarks).
        # The writes take what the loads leave and catch up after; a block not yet on disk is
        # still in the memory tier (or its write task holds it).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cachenode-disk-write",
                                          initializer=_lowest_priority)

    def __len__(self) -> int:
        return len(self._index)

    def rebuild(self) -> int:
        """Scan the directory into the index (oldest first); drop temp files and strangers."""
        os.makedirs(self._tmp, exist_ok=True)
        for name in os.listdir(self._tmp):
            _unlink(os.path.join(self._tmp, name))
        found = []
        for sub in os.listdir(self.root):
            subdir = os.path.join(self.root, sub)
            if sub == "tmp" or not os.path.isdir(subdir):
                continue
            for name in os.listdir(subdir):
                path = os.path.join(subdir, name)
                m = _NAME_RE.match(name)
                st = os.stat(path)
                if not m or m.group(1)[:2] != sub or st.st_size != int(m.group(3), 16):
                    _unlink(path)  # a stranger, an old name, or truncated
                    self.dropped += 1
                    continue
                found.append((st.st_mtime_ns, m.group(1), DiskEntry(path, st.st_size, m.group(2), False)))
        found.sort()
        self._index.clear()
        self.used = 0
        for _, key, entry in found:
            self._index[key] = entry
            self.used += entry.length
        self._evict(0)
        return len(self._index)

    def get(self, key: str) -> DiskEntry | None:
        entry = self._index.get(key)
        if entry is not None:
            self._index.move_to_end(key)
        return entry

    def open(self, key: str):
        """(open file, release) of a cached block, or None if it is not (or no longer) here.

        Opened synchronously on the event loop, so no eviction can come between the index
        lookup and the open: from here the bytes stay readable until `release()`, evicted or
        not. The caller closes the file, then calls `release` once.
        """
        entry = self.get(key)
        if entry is None:
            return None
        try:
            f = open(entry.path, "rb", buffering=0)
        except OSError:  # removed behind our back (an operator, a full-disk cleanup)
            self.discard(key)
            return None
        path = entry.path
        self._holders[path] = self._holders.get(path, 0) + 1

        def release() -> None:
            left = self._holders[path] - 1
            if left:
                self._holders[path] = left
                return
            del self._holders[path]
            self.used -= self._held_evicted.pop(path, 0)

        return f, release

    @property
    def held_evicted_bytes(self) -> int:
        """Bytes of evicted files still open for a send (counted in `used`)."""
        return sum(self._held_evicted.values())

    async def read_verified(self, key: str) -> memoryview | None:
        """The block's bytes if they match their digest; a corrupt file is dropped (None)."""
        entry = self._index.get(key)
        if entry is None:
            return None
        try:
            data = await asyncio.to_thread(_read_file, entry.path)
        except OSError:
            data = None
        if data is None or len(data) != entry.length or block_digest(data) != entry.digest:
            self.discard(key)
            return None
        entry.verified = True
        return data

    async def write(self, key: str, data, digest: str) -> None:
        """Store a block atomically; raises DiskFull when the filesystem is out of space."""
        n = len(data)
        if n > self.capacity or key in self._index:
            return
        self._evict(n)
        if self.used + n > self.capacity:
            return  # the room left is being written by other blocks: not cached this time
        self.used += n  # reserved while the temp file is written: it is on the disk too
        tmp = os.path.join(self._tmp, f"{key}.{uuid.uuid4().hex}")
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, _write_file, tmp, data)
            if key in self._index:  # written meanwhile by another path; keep the first
                raise FileExistsError(key)
            subdir = os.path.join(self.root, key[:2])
            os.makedirs(subdir, exist_ok=True)
            path = os.path.join(subdir, f"{key}-{digest}-{n:x}")
            os.rename(tmp, path)
        except OSError as exc:
            self.used -= n
            _unlink(tmp)
            if isinstance(exc, FileExistsError):
                return
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFull(exc.errno, f"cache directory {self.root} is full") from exc
            raise
        self._index[key] = DiskEntry(path, n, digest, True)

    def close(self) -> None:
        """Stop the writer thread once the writes queued so far are done."""
        self._writer.shutdown(wait=True)

    def discard(self, key: str) -> None:
        entry = self._index.pop(key, None)
        if entry is None:
            return
        if entry.path in self._holders:
            # Still being sent: its bytes occupy the disk until the holder closes it.
            # (Summed: the same name may have been written and evicted again meanwhile.)
            self._held_evicted[entry.path] = self._held_evicted.get(entry.path, 0) + entry.length
            self.evicted_while_held += 1
            if self._on_held_eviction is not None:
                self._on_held_eviction()
        else:
            self.used -= entry.length
        _unlink(entry.path)

    def _evict(self, incoming: int) -> None:
        while self._index and self.used + incoming > self.capacity:
            key = next(iter(self._index))
            self.discard(key)


def _read_file(path: str) -> memoryview:
    """A block file's bytes, in a block buffer (it is kept in the memory tier next)."""
    with open(path, "rb", buffering=0) as f:
        buf = block_buffer(os.fstat(f.fileno()).st_size)
        got = 0
        while got < len(buf):
            n = f.readinto(buf[got:])
            if not n:  # shorter than it was a moment ago: the length check drops it
                break
            got += n
        return buf[:got]


def _write_file(path: str, data) -> None:
    with open(path, "wb", buffering=0) as f:
        view = memoryview(data)
        while view:
            n = f.write(view)
            view = view[n:]


def _lowest_priority() -> None:
    """Run the calling thread at nice 19 (on Linux the nice value is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the writes then run at normal priority


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
