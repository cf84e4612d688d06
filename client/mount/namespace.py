"""The mount's directory tree: the sources' blobs as listed by the nodes, cached briefly, with stable inodes."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from urllib.parse import quote

from cachenode.blocks import ObjectInfo
from cachenode.client.listing import blob_tree
from cachenode.errors import CacheError, InvalidSource
from cachenode.source import AZURE, SourceRef

from .offload import OffloadedClient

log = logging.getLogger(__name__)
ROOT = 1  # the FUSE root inode (pyfuse3.ROOT_INODE)


@dataclass(frozen=True)
class Entry:
    """One file or directory of the mount; `path` is relative to the mount ("" is its root)."""

    path: str
    info: ObjectInfo | None = None  # None: a directory
    url: str | None = None          # what the loader opens (through the one source check)

    @property
    def is_dir(self) -> bool:
        return self.info is None


@dataclass(frozen=True)
class MountSource:
    """A --source: the URL as given, its checked SourceRef, and the listing prefix (a directory)."""

    url: str
    ref: SourceRef

    @property
    def prefix(self) -> str:
        p = self.ref.path
        return p if not p or p.endswith("/") else p + "/"

    def blob_url(self, blob: str) -> str:
        # The source URL as the user gave it plus the blob's name below it, quoted once: opening
        # it parses it again through the one source check (parse_source unquotes it once).
        return f"{self.url.rstrip('/')}/{quote(blob[len(self.prefix):], safe='/')}"


def parse_sources(client: OffloadedClient, urls: list[str]) -> list[MountSource]:
    """Check every --source; all must be blob containers/prefixes, one account per container name."""
    if not urls:
        raise InvalidSource("name at least one --source az://<container>[/<prefix>] to mount")
    out, accounts = [], {}
    for url in urls:
        ref = client.parse(url, prefix=True)
        if ref.kind != AZURE:
            raise InvalidSource(f"--source {url!r}: the mount shows blob containers; use az://container/prefix")
        if accounts.setdefault(ref.container, ref.account) != ref.account:
            raise InvalidSource(f"--source {url!r}: container {ref.container!r} is already mounted from "
                                f"account {accounts[ref.container]!r}; one account per container name")
        out.append(MountSource(url, ref))
    return out


class Namespace:
    """Paths <container>/<blob name> of every source, from the nodes' listings.

    Listings are refreshed at most every `ttl` seconds (one refresh at a time; callers wait on it).
    Inode numbers never change or get reused while the mount lives, so the kernel's cached
    entries stay valid across refreshes.
    """

    def __init__(self, client: OffloadedClient, sources: list[MountSource], ttl: float,
                 clock=time.monotonic) -> None:
        self._client = client
        self._sources = sources
        self._ttl = ttl
        self._clock = clock
        self._expires = float("-inf")
        self._refreshing: asyncio.Future | None = None
        self._by_path: dict[str, Entry] = {"": Entry("")}
        self._children: dict[str, list[str]] = {"": []}
        self._inodes: dict[str, int] = {"": ROOT}
        self._last: dict[int, Entry] = {ROOT: Entry("")}  # inode -> latest entry, also once gone

    def inode(self, path: str) -> int:
        ino = self._inodes.get(path)
        if ino is None:
            ino = self._inodes[path] = len(self._inodes) + 1
        return ino

    async def refresh(self, *, wait: bool = True) -> None:
        """List every source again if the cached listing is older than the TTL.

        With `wait=False` an expired listing is still answered at once and refreshed in the
        background: a slow origin listing (seconds, under load) must not stall every lookup of
        a loader that is busy reading files it already has.
        """
        if self._clock() < self._expires:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._relist())
            self._refreshing.add_done_callback(self._refreshed)
        if wait or self._expires == float("-inf"):
            await asyncio.shield(self._refreshing)

    def _refreshed(self, task: asyncio.Future) -> None:
        self._refreshing = None
        if not task.cancelled() and task.exception() is not None and self._expires != float("-inf"):
            log.warning("listing failed: %s", task.exception())

    async def _relist(self) -> None:
        try:
            listings = await asyncio.gather(*(self._list(s) for s in self._sources))
        except (CacheError, OSError) as exc:
            if self._expires == float("-inf"):
                raise
            # Keep serving the last listing: an open model must not vanish in a short outage.
            log.warning("listing failed, keeping the previous one for %g s: %s", self._ttl, exc)
            self._expires = self._clock() + self._ttl
            return
        files, dirs = blob_tree("", (item for listing in listings for item in listing))
        dirs |= {s.ref.container for s in self._sources}  # an empty source still shows
        by_path = {"": Entry("")}
        by_path.update((d, Entry(d)) for d in dirs)
        by_path.update((p, Entry(p, info, url)) for p, (info, url) in files.items())
        children: dict[str, list[str]] = {p: [] for p in dirs | {""}}
        for p in sorted(by_path):
            if p:
                children[p.rsplit("/", 1)[0] if "/" in p else ""].append(p)
        for p, e in by_path.items():
            self._last[self.inode(p)] = e
        self._by_path, self._children = by_path, children
        self._expires = self._clock() + self._ttl

    async def _list(self, source: MountSource) -> list[tuple[str, tuple[ObjectInfo, str]]]:
        ref = replace(source.ref, path=source.prefix)
        listing = await self._client.list(ref)
        return [(f"{r.container}/{r.path}", (info, source.blob_url(r.path)))
                for r, info in listing if r.path.startswith(source.prefix)]

    def entry(self, inode: int) -> Entry | None:
        """The inode's entry; a blob gone from the listing keeps its last one (it may be open)."""
        return self._last.get(inode)

    async def lookup(self, parent: int, name: str) -> tuple[int, Entry] | None:
        await self.refresh(wait=False)
        base = self._last.get(parent)
        if base is None:
            return None
        path = f"{base.path}/{name}" if base.path else name
        e = self._by_path.get(path)
        return (self.inode(path), e) if e is not None else None

    async def children(self, inode: int) -> list[tuple[str, int, Entry]]:
        """(name, inode, entry) of a directory's entries, sorted by name."""
        await self.refresh(wait=False)
        base = self._last.get(inode)
        if base is None:
            return []
        out = []
        for p in self._children.get(base.path, []):
            out.append((p.rsplit("/", 1)[-1], self.inode(p), self._by_path[p]))
        return out

    def update(self, inode: int, info: ObjectInfo) -> None:
        """A file opened at another version than listed: show its size and time from now on."""
        e = self._last.get(inode)
        if e is None or e.is_dir:
            return
        new = replace(e, info=info)
        self._last[inode] = new
        if self._by_path.get(e.path) == e:
            self._by_path[e.path] = new
