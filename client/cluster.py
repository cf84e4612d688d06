"""The loader's view of the cluster: which node answers, its members, and a channel to each."""

from __future__ import annotations

import logging

import aiohttp

from cachenode.blocks import BlockRequest
from cachenode.errors import PeerUnavailable
from cachenode.placement import Member, rank
from cachenode.routing import Channel, read_from_owners
from cachenode.transport.http_client import HttpNodeClient
from cachenode.transport.registry import pick

from .config import ClientConfig

log = logging.getLogger("cachenode.client")


class Route:
    """The members a file's blocks go to, and the ones found dead during the file's life."""

    def __init__(self, cluster: "Cluster", members: list[Member]) -> None:
        self._cluster = cluster
        self.members = {m.id: m for m in members}
        self.down: set[str] = set()

    async def read_block(self, req: BlockRequest, dest: memoryview) -> bool:
        """Fill `dest` from the block's owner or the next in rank; False if none could."""
        healthy = [m.id for m in self.members.values() if m.healthy]
        got = await read_from_owners(req, dest, rank(req.key, healthy), self.channel, self.down)
        return got is not None

    def channel(self, member_id: str) -> Channel:
        return self._cluster.channel(self.members[member_id])


class Cluster:
    """Discovery (the first configured node that answers) and transport choice per member
    (UCX where both sides have it, else HTTP). Owns the HTTP session and channels."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._http: dict[str, HttpNodeClient] = {}
        self._ucx_clients: dict[str, Channel] = {}
        self._ucx = None
        self._ucx_failed = False

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=max(16, 2 * self.config.window))
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def node(self, url: str) -> HttpNodeClient:
        """The HTTP client of one node (metadata always goes over HTTP)."""
        client = self._http.get(url)
        if client is None:
            client = self._http[url] = HttpNodeClient(url, self.config.token, self._session_(),
                                                      read_timeout=self.config.peer_timeout)
        return client

    def channel(self, member: Member) -> Channel:
        """The block channel to `member`, by the loader's transport preference."""
        if pick(self.config.transports, member.transports) == "ucx" and not self._ucx_failed:
            client = self._ucx_clients.get(member.id)
            if client is None:
                try:
                    from cachenode.transport.ucx_client import UcxContext, UcxNodeClient

                    self._ucx = self._ucx or UcxContext()
                    client = UcxNodeClient(member.url, member.transports["ucx"], self.config.token, self._ucx,
                                           timeout=self.config.peer_timeout,
                                           max_outstanding=self.config.window)
                except Exception as exc:  # noqa: BLE001 - UCX is an accelerator, TCP always works
                    log.warning("UCX unavailable (%s); using TCP", exc)
                    self._ucx_failed = True
                    return self.node(member.url)
                self._ucx_clients[member.id] = client
            return client
        return self.node(member.url)

    async def first(self) -> tuple[HttpNodeClient, list[Member]] | None:
        """The first configured node that answers, and its view of the cluster."""
        for url in self.config.nodes:
            node = self.node(url)
            try:
                return node, await node.members()
            except PeerUnavailable:
                continue
        return None

    async def require(self) -> tuple[HttpNodeClient, list[Member]]:
        first = await self.first()
        if first is None:
            raise PeerUnavailable(f"no cache node answered (tried {', '.join(self.config.nodes) or 'none'})")
        return first

    def route(self, members: list[Member]) -> Route:
        return Route(self, members)

    async def close(self) -> None:
        for client in self._http.values():
            client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
