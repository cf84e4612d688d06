"""The loader's public API: AsyncClient / Client, and cachenode.open / cachenode.aopen / cachenode.warm."""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable, TypeVar

from cachenode.blocks import BlockRequest, ObjectInfo
from cachenode.errors import BlockCorrupt, CacheError, PeerUnavailable
from cachenode.placement import Member
from cachenode.source import SourceRef, parse_source
from cachenode.transport.base import BlockMapper
from cachenode.transport.registry import Registry

from .bypass import Bypass, BypassWarning
from .cluster import Cluster
from .config import ClientConfig
from .files import AsyncCacheFile, CacheFile
from .iothread import LoopThread
from .reader import BlockReader

T = TypeVar("T")
__all__ = ["AsyncClient", "Client", "BypassWarning", "ClientConfig", "open", "aopen", "warm"]


class AsyncClient:
    """Opens files through cache nodes; falls back to the origin ("bypass") when none answers.

    Bound to the event loop it is first used on. Arguments override the environment (see
    ClientConfig); pass `config=` to give a whole ClientConfig instead. `registry`: the transports
    to use (default HTTP and UCX; tests add the in-process one).
    """

    def __init__(self, nodes: Iterable[str] | None = None, token: str | None = None, *,
                 config: ClientConfig | None = None, registry: Registry | None = None, **kwargs) -> None:
        self.config = config or ClientConfig.resolve(nodes, token, **kwargs)
        self.cluster = Cluster(self.config, registry)
        self._bypass = Bypass(self.config)

    @property
    def window(self) -> int:
        return self.config.window

    def parse(self, url: str, *, prefix: bool = False) -> SourceRef:
        return parse_source(url, default_account=self.config.azure.account, prefix=prefix)

    async def _resolve(self, ref: SourceRef):
        """(size+ETag, block size, node URL or "origin", route or None) for an open."""
        failures: list[str] = []
        answer = await self.cluster.ask(lambda node: node.stat(ref), failures)
        if answer is not None:
            node, members, (info, block_size) = answer
            return info, block_size, node.base_url, self.cluster.route(members)
        why = f": {'; '.join(failures)}" if failures else ""
        nodes = self.config.nodes
        self._bypass.warn(f"no cache node answered (tried {', '.join(nodes)}){why}" if nodes
                          else "no cache node configured (CACHENODE_NODES)")
        return await self._bypass.stat(ref), self.config.block_size, "origin", None

    async def stat(self, url: str) -> dict:
        ref = self.parse(url)
        info, block_size, via, _ = await self._resolve(ref)
        return {"source": str(ref), "size": info.size, "etag": info.etag, "modified": info.modified,
                "block_size": block_size, "via": via}

    async def open(self, url: str, *, on_bytes: Callable[[int], None] | None = None) -> AsyncCacheFile:
        """Open `url` for reading, pinned to its current ETag for the life of the file."""
        ref = self.parse(url)
        info, block_size, via, route = await self._resolve(ref)

        channels = self.cluster.channels

        async def fetch(index: int, dest: memoryview) -> None:
            req = BlockRequest(ref, info.etag, info.size, block_size, index)
            host = channels.host_node() if route is not None else None
            if host is not None:
                # This host's node first: the same door (token, allow-list), one copy, and the
                # host's readers share one pull. If it fails, the owners are asked as usual.
                try:
                    await host.read_block(req, dest)
                    return
                except (PeerUnavailable, BlockCorrupt) as exc:
                    channels.host_node_failed(exc)
            if route is not None:
                if await route.read_block(req, dest):
                    return
                self._bypass.warn(f"no cache node could serve block {index} of {ref}")
            else:
                self._bypass.warn(f"block {index} of {ref}: no cache node answered its open")
            await self._bypass.read_into(ref, info.etag, index * block_size, dest)

        async def fetch_mapped(index: int) -> memoryview | None:
            # Cached whole blocks (the mount's, partial reads') are this host's node's own pages,
            # mapped read-only: no copy here at all. Any failure: fetch() as usual.
            host = channels.host_node() if route is not None else None
            if not isinstance(host, BlockMapper):
                return None
            req = BlockRequest(ref, info.etag, info.size, block_size, index)
            try:
                return await host.map_block(req, req.span[1])
            except (PeerUnavailable, BlockCorrupt) as exc:
                channels.host_node_failed(exc)
                return None

        reader = BlockReader(fetch, info.size, block_size, window=self.config.window,
                             readahead=self.config.readahead, on_bytes=on_bytes, fetch_owned=fetch_mapped)
        return AsyncCacheFile(reader, url, info.etag, via)

    @property
    def bypass_count(self) -> int:
        """Stats and blocks this client read from the origin directly, around the cluster."""
        return self._bypass.count

    def hands_over(self) -> bool:
        """True if blocks come from this host's node by descriptor (local_socket, not failed)."""
        return self.cluster.channels.host_node() is not None

    def digest_seconds(self) -> float:
        """Time this client's block channels have spent checking digests so far (LoadStats)."""
        return self.cluster.channels.digest_seconds()

    async def list(self, source: str | SourceRef) -> list[tuple[SourceRef, ObjectInfo]]:
        """Objects under a prefix (a URL or a SourceRef), as a node lists them from its origin."""
        ref = self.parse(source, prefix=True) if isinstance(source, str) else source
        node, _ = await self.cluster.require()
        return (await node.list(ref))[0]

    async def warm(self, url: str, *, progress: Callable[[int], None] | None = None):
        """Have each owner fill its blocks of `url` (a file, or every file under a prefix)."""
        from cachenode.warming import select_objects, warm_objects

        ref = self.parse(url, prefix=True)
        node, members = await self.cluster.require()
        listing, block_size = await node.list(ref)
        objects = select_objects(listing, ref.path)
        if not objects:
            raise CacheError(f"nothing to warm: no objects under {url}")

        async def send_fill(member: Member, payload: dict) -> dict:
            return await self.cluster.node(member.url).fill(payload)

        return await warm_objects(objects, block_size, members, send_fill, progress=progress)

    async def members(self) -> list[Member]:
        return (await self.cluster.require())[1]

    async def close(self) -> None:
        await self._bypass.close()
        await self.cluster.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Client:
    """Sync face of AsyncClient: its own I/O thread; files it opens stay valid until close()."""

    def __init__(self, nodes: Iterable[str] | None = None, token: str | None = None, **kwargs) -> None:
        self._io = LoopThread()
        self.aclient = AsyncClient(nodes, token, **kwargs)
        self.config = self.aclient.config

    def run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine of this client's AsyncClient on its I/O thread and wait for it."""
        return self._io.run(coro)

    def stat(self, url: str) -> dict:
        return self.run(self.aclient.stat(url))

    def list(self, url: str) -> list[tuple[SourceRef, ObjectInfo]]:
        return self.run(self.aclient.list(url))

    def warm(self, url: str, *, progress=None):
        return self.run(self.aclient.warm(url, progress=progress))

    def members(self) -> list[Member]:
        return self.run(self.aclient.members())

    def open(self, url: str, *, on_bytes=None, _owned: bool = False) -> CacheFile:
        afile = self.run(self.aclient.open(url, on_bytes=on_bytes))
        return CacheFile(afile, self._io, on_close=self.close if _owned else None)

    def close(self) -> None:
        if not self._io.loop.is_closed():
            self.run(self.aclient.close())
            self._io.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open(url: str, mode: str = "rb", *, nodes: Iterable[str] | None = None, token: str | None = None,
         **kwargs) -> CacheFile:
    """Open a checkpoint file through the cache: a seekable, read-only binary file.

    `url` is az://container/path, an https blob URL, an Azurite URL or file:///path. The file
    owns a private client, closed with it.
    """
    if mode not in ("r", "rb"):
        raise ValueError(f"cachenode files are read-only binary: mode {mode!r} not supported")
    on_bytes = kwargs.pop("on_bytes", None)
    client = Client(nodes, token, **kwargs)
    try:
        return client.open(url, on_bytes=on_bytes, _owned=True)
    except BaseException:
        client.close()
        raise


def warm(url: str, *, nodes: Iterable[str] | None = None, token: str | None = None, progress=None):
    """Fill the cluster with `url` (or everything under it) before loaders ask for it."""
    with Client(nodes, token) as client:
        return client.warm(url, progress=progress)


async def aopen(url: str, *, client: AsyncClient) -> AsyncCacheFile:
    """Async twin of open(); the caller owns `client` (one per event loop)."""
    return await client.open(url)
