"""Transport conformance: the same contract over HTTP, UCX over TCP and UCX over shared memory."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from cachenode.blocks import BlockRequest
from cachenode.blocks import block_count
from cachenode.client.api import AsyncClient
from cachenode.client.iothread import LoopThread
from cachenode.errors import BadRequest, Forbidden, PeerUnavailable, SourceNotFound
from cachenode.placement import Member
from cachenode.source import parse_source
from cachenode.testing.azurite import connection_string
from cachenode.testing.node import NodeProcess
from helpers import BS, TOKEN

# name -> (node flags, node environment, loader transport preference)
TRANSPORTS = {
    "http": ((), {}, "tcp"),
    "ucx-tcp": (("--ucx",), {"UCX_TLS": "tcp"}, "ucx"),
    "ucx-shm": (("--ucx",), {"UCX_TLS": "sm,cma,tcp"}, "ucx"),
}


@pytest.fixture(scope="module")
def io_loop():
    # UCX binds to one event loop per process: every UCX test here runs on this one.
    loop = LoopThread("conformance")
    yield loop
    loop.close()


@pytest.fixture(params=list(TRANSPORTS))
def transport(request, tmp_path, proxy, io_loop):
    flags, env, pref = TRANSPORTS[request.param]
    node = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=connection_string(proxy.port),
                       args=("--block-size", str(BS), "--peer-timeout", "3", *flags), env=env).start()
    client = AsyncClient(nodes=[node.url], token=TOKEN, transports=pref, peer_timeout=3)

    others: list[AsyncClient] = []

    async def channel(token=TOKEN):
        """The loader's channel to the node, as its transport preference picks it."""
        c = client
        if token != TOKEN:
            c = AsyncClient(nodes=[node.url], token=token, transports=pref, peer_timeout=3)
            others.append(c)
        me = (await client.members())[0]
        return c.cluster.channel(Member(me.id, me.url, True, me.transports))

    yield request.param, node, client, channel
    for c in [client, *others]:
        io_loop.run(c.close())
    node.stop()


def _req(url: str, client: AsyncClient, io_loop, index: int) -> BlockRequest:
    st = io_loop.run(client.stat(url))
    return BlockRequest(parse_source(url), st["etag"], st["size"], st["block_size"], index)


def _kind(name: str, ch) -> None:
    assert type(ch).__name__ == ("HttpNodeClient" if name == "http" else "UcxNodeClient")


def test_byte_exact_blocks_and_short_last_block(blobs, transport, io_loop):
    name, node, client, channel = transport
    data = os.urandom(4 * BS + 1234)
    url = blobs.put("c.bin", data)
    ch = io_loop.run(channel())
    _kind(name, ch)
    out = bytearray(len(data))
    for i in range(block_count(len(data), BS)):
        req = _req(url, client, io_loop, i)
        dest = memoryview(out)[i * BS:min(len(data), (i + 1) * BS)]
        io_loop.run(ch.read_block(req, dest))
    assert bytes(out) == data
    assert len(dest) == 1234


def test_missing_block_and_missing_blob(blobs, transport, io_loop):
    name, node, client, channel = transport
    url = blobs.put("m.bin", os.urandom(2 * BS))
    ch = io_loop.run(channel())
    req = _req(url, client, io_loop, 0)
    bad = BlockRequest(req.ref, req.etag, req.size, req.block_size, 5)
    with pytest.raises(BadRequest, match="block index 5 out of range"):
        io_loop.run(ch.read_block(bad, memoryview(bytearray(BS))))
    # a blob that does not exist at the pinned ETag: not found (404), never empty bytes
    gone = BlockRequest(parse_source(blobs.url("nope.bin")), req.etag, req.size, req.block_size, 0)
    with pytest.raises(SourceNotFound, match="nope.bin"):
        io_loop.run(ch.read_block(gone, memoryview(bytearray(BS))))


def test_auth_refused(blobs, transport, io_loop):
    name, node, client, channel = transport
    url = blobs.put("a.bin", os.urandom(BS))
    req = _req(url, client, io_loop, 0)
    ch = io_loop.run(channel(token="wrong"))
    with pytest.raises(Forbidden, match="wrong cluster token"):
        io_loop.run(ch.read_block(req, memoryview(bytearray(BS))))


def _blocks(blobs, transport, io_loop, name: str, n: int):
    """A blob of n random blocks: (its bytes, the loader's channel, a request per block, a buffer)."""
    _, _, client, channel = transport
    data = os.urandom(n * BS)
    url = blobs.put(name, data)
    ch = io_loop.run(channel())
    return data, ch, [_req(url, client, io_loop, i) for i in range(n)], bytearray(len(data))


def test_many_concurrent_requests(blobs, transport, io_loop):
    data, ch, reqs, out = _blocks(blobs, transport, io_loop, "many.bin", 64)

    async def all_at_once():
        await asyncio.gather(*(ch.read_block(r, memoryview(out)[r.index * BS:(r.index + 1) * BS])
                               for r in reqs))

    io_loop.run(all_at_once())
    assert bytes(out) == data


def test_peer_dies_mid_transfer(blobs, transport, io_loop):
    node = transport[1]
    data, ch, reqs, out = _blocks(blobs, transport, io_loop, "die.bin", 32)
    done = []

    async def read_until_dead():
        for r in reqs:
            if r.index == 8:
                node.proc.send_signal(signal.SIGKILL)
                node.proc.wait(10)
            await ch.read_block(r, memoryview(out)[r.index * BS:(r.index + 1) * BS])
            done.append(r.index)

    with pytest.raises(PeerUnavailable):
        io_loop.run(asyncio.wait_for(read_until_dead(), 30))
    assert done == list(range(8))
    assert bytes(out[:8 * BS]) == data[:8 * BS]


def test_a_node_that_is_not_listening_is_named_unreachable_not_failing_mid_transfer():
    """The fallback log line tells an operator what happened: no transfer began."""
    import aiohttp

    from cachenode.testing.ports import free_port
    from cachenode.blocks import BlockRequest
    from cachenode.source import parse_source
    from cachenode.transport.http_client import HttpNodeClient

    dead = f"http://127.0.0.1:{free_port()}"
    req = BlockRequest(parse_source("az://models/x.bin", default_account="acct"), '"e"', 10, 1 << 20, 0)

    async def main():
        async with aiohttp.ClientSession() as s:
            with pytest.raises(PeerUnavailable) as info:
                await HttpNodeClient(dead, None, s).read_block(req, memoryview(bytearray(10)))
        return str(info.value)

    msg = asyncio.run(main())
    assert f"cache node {dead} not reachable: ConnectionRefusedError" in msg and "mid-transfer" not in msg, msg
