"""Node-side routing: serve blocks this node owns, forward the rest to their owner (one hop)."""

from __future__ import annotations

import hmac
import logging

import aiohttp

from .blocks import block_key, block_span
from .errors import BlockCorrupt, Forbidden, PeerUnavailable
from .membership import Membership
from .node import Block, BlockRequest, Node
from .placement import rank

log = logging.getLogger("cachenode.router")


class Router:
    """Decides who answers a block request: the owner by rendezvous rank, else the fallbacks.

    Only the owner (or, while it is down, the next in rank) fills from the origin, so a block is
    read from blob storage once per cluster. A forwarded request is always served locally.
    """

    def __init__(self, node: Node, membership: Membership, token: str | None,
                 peer_timeout: float = 10.0, forward_secret: str = "") -> None:
        self.node = node
        self._forward_secret = forward_secret
        self.membership = membership
        self._token = token
        self._peer_timeout = peer_timeout
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, object] = {}
        self.ucx_address: str | None = None  # set when the node also serves UCX

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=32)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        await self.membership.start(self._session)

    async def close(self) -> None:
        for client in self._clients.values():
            client.close()
        await self.membership.close()
        if self._session is not None:
            await self._session.close()

    def peer(self, url: str):
        from cachenode.transport.http_client import HttpNodeClient

        client = self._clients.get(url)
        if client is None:
            assert self._session is not None
            client = self._clients[url] = HttpNodeClient(url, self._token, self._session,
                                                         read_timeout=self._peer_timeout)
        return client

    def from_node(self, marker: str | None) -> bool:
        """True if `marker` (the forwarded field of a request) proves a node sent it; a made-up
        one is refused, so a loader cannot make a non-owner fill (and fill twice per cluster)."""
        if marker is None:
            return False
        if not hmac.compare_digest(marker.encode(), self._forward_secret.encode()) and self._forward_secret:
            raise Forbidden("the forwarded marker is for node-to-node requests: wrong node credential")
        return True

    async def get_block(self, req: BlockRequest, *, verify: bool = False, forwarded: str | None = None,
                        avoid: frozenset[str] = frozenset()) -> Block:
        self.node.origin_for(req.ref)  # allow-list first: never forward what we would refuse
        if self.from_node(forwarded):
            return await self.node.get_block(req, verify=verify)
        offset, length = block_span(req.size, req.block_size, req.index)
        key = block_key(req.ref, req.etag, req.size, req.block_size, req.index)
        for member_id in rank(key, [m for m in self.membership.healthy_ids() if m not in avoid]):
            if member_id == self.membership.self_id:
                break
            member = self.membership.get(member_id)
            if member is None:
                continue
            buf = bytearray(length)
            try:
                try:
                    _, dg = await self.peer(member.url).read_block(req, memoryview(buf), forwarded=self._forward_secret or "1")
                except BlockCorrupt:
                    _, dg = await self.peer(member.url).read_block(req, memoryview(buf), forwarded=self._forward_secret or "1",
                                                                   verify=True)
            except (PeerUnavailable, BlockCorrupt) as exc:
                log.warning("owner %s failed for block %d of %s: %s", member_id, req.index, req.ref, exc)
                self.node.metrics.errors.labels("peer").inc()
                self.membership.mark_down(member_id)
                continue
            self.node.metrics.forwarded.inc()
            return Block(length, dg, "peer", data=buf)  # not kept here: no replication
        return await self.node.get_block(req, verify=verify)
