"""The loader's view of the cluster: which configured node answers, its members, routes to owners."""

from __future__ import annotations

import time
from typing import Callable

from cachenode.blocks import BlockRequest
from cachenode.errors import PeerUnavailable
from cachenode.pauses import Pauses
from cachenode.placement import Member, rank
from cachenode.routing import Channel, read_from_owners
from cachenode.transport.http_client import HttpNodeClient
from cachenode.transport.registry import Registry

from .channels import Channels
from .config import ClientConfig


class Route:
    """The members a file's blocks go to; members that fail are paused client-wide (Pauses)."""

    def __init__(self, channels: Channels, members: list[Member], pauses: Pauses,
                 on_failure: Callable[[str, Exception], None] | None = None) -> None:
        self._channels = channels
        self.members = {m.id: m for m in members}
        self.pauses = pauses
        self._on_failure = on_failure

    async def read_block(self, req: BlockRequest, dest: memoryview) -> bool:
        """Fill `dest` from the block's owner or the next in rank; False if none could."""
        healthy = [m.id for m in self.members.values() if m.healthy]
        got = await read_from_owners(req, dest, rank(req.key, healthy), self.channel, self.pauses,
                                     background=self._channels.config.background, on_down=self._on_failure)
        return got is not None

    def channel(self, member_id: str) -> Channel:
        return self._channels.for_member(self.members[member_id])


class Cluster:
    """Discovery: the first configured node that answers gives the member list."""

    def __init__(self, config: ClientConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.channels = Channels(config, registry)
        # One pause book for every file of this client: a member that failed a read of one
        # file sits out (briefly) for the others too, and is probed once, not once per file.
        self.pauses = Pauses()
        self._known: tuple[str, list[Member], float] | None = None  # (node URL, its members, when)

    def node(self, url: str) -> HttpNodeClient:
        """The HTTP client of one node (stat, list, members, fill)."""
        return self.channels.http(url)

    def channel(self, member: Member) -> Channel:
        """The block channel to `member` (UCX or HTTP)."""
        return self.channels.for_member(member)

    async def ask(self, question, failures: list[str]):
        """(node, its members, `question(node)`) from the first configured node that answers
        both; a node that dies between the two is skipped like one that never answered (its
        reason goes to `failures`). None when no node answered.

        The member list is reused for `members_ttl` seconds (with the node that gave it), and
        asked for again at once when that node fails or a member failed a read meanwhile.
        """
        known = self._known
        if known is not None and time.monotonic() - known[2] < self.config.members_ttl:
            node = self.node(known[0])
            try:
                return node, known[1], await question(node)
            except PeerUnavailable as exc:
                self.forget_members()
                failures.append(str(exc))
        for url in self.config.nodes:
            node = self.node(url)
            try:
                members = await node.members()
                self._known = (url, members, time.monotonic())
                return node, members, await question(node)
            except PeerUnavailable as exc:
                failures.append(str(exc))
        return None

    def forget_members(self, *_why) -> None:
        """Ask for the member list again at the next open (a member failed, or a node did)."""
        self._known = None

    async def require(self) -> tuple[HttpNodeClient, list[Member]]:
        """The first configured node that answers, and its view of the cluster."""
        answer = await self.ask(_nothing, [])
        if answer is None:
            raise PeerUnavailable(f"no cache node answered (tried {', '.join(self.config.nodes) or 'none'})")
        return answer[0], answer[1]

    def route(self, members: list[Member]) -> Route:
        return Route(self.channels, members, self.pauses, on_failure=self.forget_members)

    async def close(self) -> None:
        await self.channels.close()


async def _nothing(node: HttpNodeClient) -> None:
    """The question to `ask` when only the member list is wanted."""
