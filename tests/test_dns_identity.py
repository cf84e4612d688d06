"""DNS-discovered members are known by the id their address answers with, not by the address."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from cachenode.node.membership import Membership


class FakeNode:
    """A /healthz on 127.0.0.1 whose answer (the node's id) the test changes."""

    def __init__(self, member_id: str | None) -> None:
        self.member_id = member_id
        self.port = 0

    async def start(self) -> "FakeNode":
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def _health(self, request):
        if self.member_id is None:
            return web.json_response({"ok": True, "transports": {}})  # a node from before ids
        return web.json_response({"ok": True, "id": self.member_id, "transports": {}})


def test_dns_member_takes_its_id_and_loses_it_when_another_node_answers():
    async def main():
        node = await FakeNode("gpu-node-7").start()
        url = f"http://127.0.0.1:{node.port}"
        # "localhost" resolves to 127.0.0.1 (and maybe ::1, where nothing answers: left out).
        async with aiohttp.ClientSession() as session:
            ms = Membership(peers_dns=f"localhost:{node.port}", health_timeout=0.5)
            ms._session = session
            await ms.refresh()
            assert [(m.id, m.url) for m in ms.members()] == [("gpu-node-7", url)]
            await ms.check_health()
            assert ms.healthy_ids() == ["gpu-node-7"]

            node.member_id = "gpu-node-9"  # the address now belongs to another node (reused pod IP)
            await ms.check_health()
            assert ms.healthy_ids() == []  # not gpu-node-7 any more
            await ms.refresh()
            assert [(m.id, m.url) for m in ms.members()] == [("gpu-node-9", url)]

            node.member_id = None  # a node from before ids in /healthz is known by its address
            fresh = Membership(peers_dns=f"localhost:{node.port}", health_timeout=0.5)
            fresh._session = session
            await fresh.refresh()
            assert [m.id for m in fresh.members()] == [f"127.0.0.1:{node.port}"]
        await node.runner.cleanup()
    asyncio.run(main())


def test_a_name_without_records_does_not_stop_a_node():
    async def main():
        async with aiohttp.ClientSession() as session:
            ms = Membership(peers_dns="no-such-service.invalid:8470", health_timeout=0.5)
            await ms.start(session)  # the first pod of a headless Service: NXDOMAIN
            assert ms.members() == []
            await ms.close()
    asyncio.run(main())
