"""A flood of silent connections does not blind a node: the cap fits the descriptor limit and sheds the silent."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import cachenode
from cachenode.node.daemon import connection_cap
from helpers import BS, TOKEN, http_get, metric


def test_the_cap_fits_the_descriptor_limit():
    assert connection_cap(512, nofile=256) < 256 // 2  # a block file may ride on each connection
    assert connection_cap(512, nofile=1 << 20) == 512
    assert connection_cap(512, nofile=1024) < 512


def test_silent_half_sent_connections_are_shed_for_new_ones(blobs, nodes):
    data = os.urandom(4 * BS)
    url = blobs.put("flood.bin", data)
    node = nodes.start("--block-size", f"{BS}", wrap=("prlimit", "--nofile=256:256", "--"))
    host, port = node.url.rsplit("//", 1)[1].split(":")
    flood: list[socket.socket] = []
    try:
        for _ in range(300):  # more than the node has descriptors
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"G")  # one byte of a request line, then silence
            flood.append(s)
        t0 = time.monotonic()
        status, body = http_get(f"{node.url}/healthz", timeout=10)
        assert status == 200 and body["ok"], body
        with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:  # members, stat, blocks
            assert f.read() == data
        assert time.monotonic() - t0 < 10  # not after the idle timeout (30 s)
        assert metric(node, "cachenode_connections_shed_total") > 0
    finally:
        for s in flood:
            s.close()
    log = node.cache_dir.with_suffix(".log").read_text()
    assert log.count("connection cap") == 1  # said once, however many were shed


def test_ucx_reply_endpoints_are_capped_and_never_shed_while_replying():
    """The node's UCX side keeps one endpoint per reply address: at the cap the least recently
    used idle one is closed for a new one, never one a reply is using. (A real flood of UCX
    workers is not made here: this drives the node's own Endpoints with a recording worker.)"""
    from cachenode.transport.ucx_wire import Endpoints

    class Ep:
        def __init__(self, name):
            self.name, self.closed = name, False

        async def close(self):
            self.closed = True

    class Worker:  # the two calls Endpoints makes of ucxx
        def get_ucx_address_from_buffer(self, b):
            return b

        async def create_endpoint_from_worker_address(self, addr, endpoint_error_handling):
            return Ep(addr)

    async def main():
        eps = Endpoints(Worker(), cap=3)
        busy = await eps.acquire(b"a")  # a reply in progress on a
        made = [busy] + [await eps.get(x) for x in (b"b", b"c")]
        await eps.get(b"b")  # b used again: c is now the least recently used idle one
        made.append(await eps.get(b"d"))
        await asyncio.sleep(0)
        assert [e.name for e in made if e.closed] == [b"c"]
        made.append(await eps.get(b"e"))
        await asyncio.sleep(0)
        assert not busy.closed and eps.shed == 2
        eps.release(b"a")
        await eps.get(b"f")
        await asyncio.sleep(0)
        assert busy.closed  # idle now, and the oldest

    asyncio.run(main())
