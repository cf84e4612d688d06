"""The loader's entry points: AsyncClient / Client, and cachenode.open / cachenode.aopen."""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterable

import aiohttp

from cachenode.blocks import DEFAULT_BLOCK_SIZE
from cachenode.env import Env, read_env, resolve_token
from cachenode.errors import BlockCorrupt, PeerUnavailable
from cachenode.node import BlockRequest
from cachenode.origin import ObjectInfo, Origin
from cachenode.origin_azure import AzureCredentials, AzureOrigin
from cachenode.origin_file import FileOrigin
from cachenode.source import FILE, SourceRef, parse_source
from cachenode.transport.http_client import HttpNodeClient

from .files import AsyncCacheFile, CacheFile
from .iothread import LoopThread
from .reader import BlockReader

log = logging.getLogger("cachenode.client")


class BypassWarning(UserWarning):
    """No cache node could serve; the loader reads the origin directly."""


class AsyncClient:
    """Opens files through cache nodes; falls back to the origin ("bypass") when none answers.

    Bound to the event loop it is first used on. Nodes default to CACHENODE_NODES, the token to
    CACHENODE_TOKEN; origin credentials (only needed for bypass) to AZURE_STORAGE_*.
    """

    def __init__(self, nodes: Iterable[str] | None = None, token: str | None = None, *,
                 azure: AzureCredentials | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                 window: int = 8, readahead: int = 4, env: Env | None = None) -> None:
        env = env or read_env()
        self.nodes = [n.rstrip("/") for n in (nodes if nodes is not None else env.nodes)]
        self.token = token or resolve_token(env.token, env.token_file)
        self.azure = azure or env.azure
        self.block_size = block_size
        self.window = window
        self.readahead = readahead
        self._session: aiohttp.ClientSession | None = None
        self._origins: dict[tuple, Origin] = {}
        self._warned = False

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=max(16, 2 * self.window))
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def _node_clients(self) -> list[HttpNodeClient]:
        return [HttpNodeClient(url, self.token, self._http()) for url in self.nodes]

    def parse(self, url: str) -> SourceRef:
        return parse_source(url, default_account=self.azure.account)

    def origin_for(self, ref: SourceRef) -> Origin:
        """The origin this loader reads in bypass, with the caller's own credentials."""
        if ref.kind == FILE:
            key: tuple = ("file",)
            make: Callable[[], Origin] = FileOrigin
        else:
            creds = self.azure
            if creds.account != ref.account:
                creds = AzureCredentials(account_name=ref.account, endpoint=ref.endpoint)
            key = ("azure", ref.account)
            make = lambda: AzureOrigin(creds)  # noqa: E731
        if key not in self._origins:
            self._origins[key] = make()
        return self._origins[key]

    def _bypass(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"cachenode: {reason}; reading the origin directly (bypass)",
                          BypassWarning, stacklevel=4)
            log.warning("%s; reading the origin directly (bypass)", reason)

    async def _resolve(self, ref: SourceRef) -> tuple[ObjectInfo, int, HttpNodeClient | None]:
        errors = []
        for node in self._node_clients():
            try:
                info, block_size = await node.stat(ref)
                return info, block_size, node
            except PeerUnavailable as exc:
                errors.append(str(exc))
        self._bypass("; ".join(errors) if errors else "no cache node configured (CACHENODE_NODES)")
        return await self.origin_for(ref).stat(ref), self.block_size, None

    async def stat(self, url: str) -> dict:
        ref = self.parse(url)
        info, block_size, node = await self._resolve(ref)
        return {"source": str(ref), "size": info.size, "etag": info.etag, "block_size": block_size,
                "via": node.base_url if node else "origin"}

    async def open(self, url: str, *, on_bytes: Callable[[int], None] | None = None) -> AsyncCacheFile:
        """Open `url` for reading, pinned to its current ETag for the life of the file."""
        ref = self.parse(url)
        info, block_size, node = await self._resolve(ref)

        async def fetch(index: int, dest: memoryview) -> None:
            req = BlockRequest(ref, info.etag, info.size, block_size, index)
            if node is not None:
                try:
                    try:
                        await node.read_block(req, dest)
                    except BlockCorrupt:
                        # Ask the node to re-check its copy; it drops and refetches a bad one.
                        await node.read_block(req, dest, verify=True)
                    return
                except PeerUnavailable as exc:
                    self._bypass(str(exc))
            await self.origin_for(ref).read_into(ref, info.etag, index * block_size, dest)

        reader = BlockReader(fetch, info.size, block_size, window=self.window,
                             readahead=self.readahead, on_bytes=on_bytes)
        return AsyncCacheFile(reader, url, info.etag, node.base_url if node else "origin")

    async def close(self) -> None:
        for origin in self._origins.values():
            await origin.close()
        self._origins.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Client:
    """Sync face of AsyncClient: its own I/O thread; files it opens stay valid until close()."""

    def __init__(self, nodes: Iterable[str] | None = None, token: str | None = None, **kwargs) -> None:
        self._loop = LoopThread()
        self._async = AsyncClient(nodes, token, **kwargs)

    def stat(self, url: str) -> dict:
        return self._loop.run(self._async.stat(url))

    def open(self, url: str, *, on_bytes=None, _owned: bool = False) -> CacheFile:
        afile = self._loop.run(self._async.open(url, on_bytes=on_bytes))
        return CacheFile(afile, self._loop, on_close=self.close if _owned else None)

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.run(self._async.close())
            self._loop.close()

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


async def aopen(url: str, *, client: AsyncClient) -> AsyncCacheFile:
    """Async twin of open(); the caller owns `client` (one per event loop)."""
    return await client.open(url)
