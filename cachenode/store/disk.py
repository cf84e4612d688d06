"""The disk tier: one file per block, named by key and digest, bounded LRU, rebuilt at start."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from ..blocks import digest as block_digest

_NAME_RE = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{32})$")


class DiskFull(OSError):
    """The cache directory has no room; the block is served without being cached."""


@dataclass
class DiskEntry:
    path: str
    length: int
    digest: str
    verified: bool  # digest checked against the bytes since this process started


class DiskTier:
    """Blocks as files `<root>/<key[:2]>/<key>-<digest>`.

    Writes go to a temp name and are renamed into place, so a crash leaves either nothing or a
    whole file; a torn or rotted file is caught by the digest in its name. No fsync: a block lost
    in a power cut is simply fetched again, and the digest rejects a partial one.
    """

    def __init__(self, root: str, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.used = 0
        self._index: OrderedDict[str, DiskEntry] = OrderedDict()
        self._tmp = os.path.join(root, "tmp")

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
                if not m or m.group(1)[:2] != sub:
                    _unlink(path)
                    continue
                st = os.stat(path)
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

    async def read_verified(self, key: str) -> bytes | None:
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
        if len(data) > self.capacity or key in self._index:
            return
        tmp = os.path.join(self._tmp, f"{key}.{uuid.uuid4().hex}")
        try:
            await asyncio.to_thread(_write_file, tmp, data)
        except OSError as exc:
            _unlink(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFull(exc.errno, f"cache directory {self.root} is full") from exc
            raise
        if key in self._index:  # written meanwhile by another path; keep the first
            _unlink(tmp)
            return
        self._evict(len(data))
        subdir = os.path.join(self.root, key[:2])
        os.makedirs(subdir, exist_ok=True)
        path = os.path.join(subdir, f"{key}-{digest}")
        os.rename(tmp, path)
        self._index[key] = DiskEntry(path, len(data), digest, True)
        self.used += len(data)

    def discard(self, key: str) -> None:
        entry = self._index.pop(key, None)
        if entry is not None:
            self.used -= entry.length
            _unlink(entry.path)

    def _evict(self, incoming: int) -> None:
        while self._index and self.used + incoming > self.capacity:
            key = next(iter(self._index))
            self.discard(key)


def _read_file(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def _write_file(path: str, data) -> None:
    with open(path, "wb", buffering=0) as f:
        view = memoryview(data)
        while view:
            n = f.write(view)
            view = view[n:]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
