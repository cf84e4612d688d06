"""The loader's entry points: AsyncClient / Client, and cachenode.open / cachenode.aopen."""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterable

import aiohttp

from cachenode.blocks import DEFAULT_BLOCK_SIZE, block_key
from cachenode.env import Env, read_env, resolve_token
from cachenode.errors import BlockCorrupt, CacheError, PeerUnavailable
from cachenode.membership import Member
from cachenode.node import BlockRequest
from cachenode.origin import ObjectInfo, Origin
from cachenode.origin_azure import AzureCredentials, AzureOrigin, bypass_credentials
from cachenode.origin_file import FileOrigin
from cachenode.placement import rank
from cachenode.source import FILE, SourceRef, parse_source
from cachenode.transport.http_client import HttpNodeClient
from cachenode.transport.registry import parse_preference, pick
from cachenode.warming import WarmSummary, select_objects, warm_objects

from .files import AsyncCacheFile, CacheFile
from .iothread import LoopThread
from .reader import BlockReader

log = logging.getLogger("cachenode.client")


class BypassWarning(UserWarning):
    """No cache node could serve; the loader reads the origin directly."""


class Route:
    """The members a loader sends blocks to, and the ones it found dead during this file's life."""

    def __init__(self, members: list[Member], clients: Callable[[Member], object]) -> None:
        self.members = {m.id: m for m in members}
        self._clients = clients
        self.down: set[str] = set()

    def candidates(self, key: str) -> list[str]:
        return rank(key, [m.id for m in self.members.values() if m.healthy and m.id not in self.down])

    def client(self, member_id: str):
        """HTTP or UCX client for the member, by the loader's transport preference."""
        return self._clients(self.members[member_id])


class AsyncClient:
    """Opens files through cache nodes; falls back to the origin ("bypass") when none answers.

    Bound to the event loop it is first used on. Nodes default to CACHENODE_NODES, the token to
    CACHENODE_TOKEN; origin credentials (only needed for bypass) to AZURE_STORAGE_*.
    """

    def __init__(self, nodes: Iterable[str] | None = None, token: str | None = None, *,
                 azure: AzureCredentials | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                 window: int = 8, readahead: int = 4, peer_timeout: float = 10.0,
                 transports: Iterable[str] | str | None = None, env: Env | None = None) -> None:
        env = env or read_env()
        self.nodes = [n.rstrip("/") for n in (nodes if nodes is not None else env.nodes)]
        self.token = token or resolve_token(env.token, env.token_file)
        self.azure = azure or env.azure
        self.block_size = block_size
        self.window = window
        self.readahead = readahead
        self.peer_timeout = peer_timeout
        self.transports = (parse_preference(transports) if isinstance(transports, str) or transports is None
                           else tuple(transports))
        if transports is None and env.transports:
            self.transports = parse_preference(env.transports)
        self._clients: dict[str, HttpNodeClient] = {}
        self._ucx_clients: dict[str, object] = {}
        self._ucx = None
        self._ucx_failed = False
        self._session: aiohttp.ClientSession | None = None
        self._origins: dict[tuple, Origin] = {}
        self._warned = False

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=max(16, 2 * self.window))
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def _client(self, url: str) -> HttpNodeClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = HttpNodeClient(url, self.token, self._http(),
                                                         read_timeout=self.peer_timeout)
        return client

    def _member_client(self, member: Member):
        if pick(self.transports, member.transports) == "ucx" and not self._ucx_failed:
            client = self._ucx_clients.get(member.id)
            if client is None:
                try:
                    from cachenode.transport.ucx_client import UcxContext, UcxNodeClient

                    self._ucx = self._ucx or UcxContext()
                    client = UcxNodeClient(member.url, member.transports["ucx"], self.token, self._ucx,
                                           timeout=self.peer_timeout, max_outstanding=self.window)
                except Exception as exc:  # noqa: BLE001 - UCX is an accelerator, TCP always works
                    log.warning("UCX unavailable (%s); using TCP", exc)
                    self._ucx_failed = True
                    return self._client(member.url)
                self._ucx_clients[member.id] = client
            return client
        return self._client(member.url)

    def parse(self, url: str, *, prefix: bool = False) -> SourceRef:
        return parse_source(url, default_account=self.azure.account, prefix=prefix)

    async def _first_node(self) -> tuple[HttpNodeClient, list[Member]] | None:
        """The first configured node that answers, and its view of the cluster."""
        for url in self.nodes:
            node = self._client(url)
            try:
                members = [Member(m["id"], m["url"], m["healthy"], m.get("transports") or {})
                           for m in await node.members()]
                return node, members
            except PeerUnavailable:
                continue
        return None

    def origin_for(self, ref: SourceRef) -> Origin:
        """The origin this loader reads in bypass, with the caller's own credentials."""
        if ref.kind == FILE:
            key: tuple = ("file",)
            make: Callable[[], Origin] = FileOrigin
        else:
            creds = bypass_credentials(self.azure, ref)
            key = ("azure", ref.account, creds.service_url(), creds.use_default_credential)
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

    async def _resolve(self, ref: SourceRef) -> tuple[ObjectInfo, int, HttpNodeClient | None, Route | None]:
        first = await self._first_node()
        if first is not None:
            node, members = first
            try:
                info, block_size = await node.stat(ref)
                return info, block_size, node, Route(members, self._member_client)
            except PeerUnavailable:
                pass
        reason = (f"no cache node answered (tried {', '.join(self.nodes)})" if self.nodes
                  else "no cache node configured (CACHENODE_NODES)")
        self._bypass(reason)
        return await self.origin_for(ref).stat(ref), self.block_size, None, None

    async def stat(self, url: str) -> dict:
        ref = self.parse(url)
        info, block_size, node, _ = await self._resolve(ref)
        return {"source": str(ref), "size": info.size, "etag": info.etag, "block_size": block_size,
                "via": node.base_url if node else "origin"}

    async def open(self, url: str, *, on_bytes: Callable[[int], None] | None = None) -> AsyncCacheFile:
        """Open `url` for reading, pinned to its current ETag for the life of the file."""
        ref = self.parse(url)
        info, block_size, node, route = await self._resolve(ref)

        async def fetch(index: int, dest: memoryview) -> None:
            req = BlockRequest(ref, info.etag, info.size, block_size, index)
            if route is not None:
                key = block_key(ref, info.etag, info.size, block_size, index)
                for member_id in route.candidates(key):
                    # On failure dest holds garbage; the next candidate overwrites all of it.
                    try:
                        client, avoid = route.client(member_id), tuple(route.down)
                        try:
                            await client.read_block(req, dest, avoid=avoid)
                        except BlockCorrupt:
                            # Ask the node to re-check its copy; it drops and refetches a bad one.
                            await client.read_block(req, dest, verify=True, avoid=avoid)
                        return
                    except (PeerUnavailable, BlockCorrupt) as exc:
                        log.warning("block %d of %s: %s; trying the next member", index, ref, exc)
                        route.down.add(member_id)
                self._bypass(f"no cache node could serve block {index} of {ref}")
            await self.origin_for(ref).read_into(ref, info.etag, index * block_size, dest)

        reader = BlockReader(fetch, info.size, block_size, window=self.window,
                             readahead=self.readahead, on_bytes=on_bytes)
        return AsyncCacheFile(reader, url, info.etag, node.base_url if node else "origin")

    async def warm(self, url: str, *, progress: Callable[[int], None] | None = None) -> WarmSummary:
        """Have each owner fill its blocks of `url` (a file, or every file under a prefix)."""
        ref = self.parse(url, prefix=True)
        first = await self._first_node()
        if first is None:
            raise PeerUnavailable(f"no cache node answered (tried {', '.join(self.nodes) or 'none'})")
        node, members = first
        listing = await node.get_json("/v1/list", ref.to_params())
        objects = [(SourceRef.from_params(o), ObjectInfo(o["size"], o["etag"])) for o in listing["objects"]]
        objects = select_objects(objects, ref.path)
        if not objects:
            raise CacheError(f"nothing to warm: no objects under {url}")

        async def send_fill(member: Member, payload: dict) -> dict:
            return await self._client(member.url).post_json("/v1/fill", payload, timeout=3600)

        return await warm_objects(objects, listing["block_size"], members, send_fill, progress=progress)

    async def members(self) -> list[Member]:
        first = await self._first_node()
        if first is None:
            raise PeerUnavailable(f"no cache node answered (tried {', '.join(self.nodes) or 'none'})")
        return first[1]

    async def close(self) -> None:
        for client in self._clients.values():
            client.close()
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

    def warm(self, url: str, *, progress=None) -> WarmSummary:
        return self._loop.run(self._async.warm(url, progress=progress))

    def members(self) -> list[Member]:
        return self._loop.run(self._async.members())

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


def warm(url: str, *, nodes: Iterable[str] | None = None, token: str | None = None,
         progress=None) -> WarmSummary:
    """Fill the cluster with `url` (or everything under it) before loaders ask for it."""
    with Client(nodes, token) as client:
        return client.warm(url, progress=progress)


async def aopen(url: str, *, client: AsyncClient) -> AsyncCacheFile:
    """Async twin of open(); the caller owns `client` (one per event loop)."""
    return await client.open(url)
