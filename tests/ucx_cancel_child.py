"""Child process for test_read_cancel's UCX cases: ucxx binds to one event loop per process."""

from __future__ import annotations

import asyncio
import os
import sys

from azure.storage.blob import BlobServiceClient

from cachenode.blocks import BlockRequest
from cachenode.client.api import AsyncClient
from cachenode.client.files import CacheFile
from cachenode.client.iothread import LoopThread
from cachenode.errors import SourceChanged
from cachenode.placement import Member
from cachenode.source import parse_source


async def _channel(client: AsyncClient):
    me = (await client.members())[0]
    ch = client.cluster.channel(Member(me.id, me.url, True, me.transports))
    assert type(ch).__name__ == "UcxNodeClient", ch
    return ch


async def failed_readinto(node: str, token: str, url: str, conn_str: str, container: str, name: str,
                          io: LoopThread) -> str:
    """A whole-file readinto whose block 0 fails (blob changed) while cached blocks still come."""
    async with AsyncClient(nodes=[node], token=token, transports="ucx", window=2) as client:
        await _channel(client)
        afile = await client.open(url)
        size, bs = afile.size, afile.block_size
        assert await afile.read_at(bs, memoryview(bytearray(size - bs))) == size - bs
        with BlobServiceClient.from_connection_string(conn_str) as svc:
            await asyncio.to_thread(svc.get_blob_client(container, name).upload_blob, os.urandom(size),
                                    overwrite=True)
        f = CacheFile(afile, io)
        buf = bytearray(size)
        try:
            await asyncio.to_thread(f.readinto, buf)
            return "readinto did not fail"
        except SourceChanged:
            pass
        after_raise = bytes(buf)
        await asyncio.sleep(1.0)
        if bytes(buf) != after_raise:
            return "fetches went on writing into the buffer after readinto raised"
        await afile.close()
        return "OK"


async def cancelled_receive(node: str, token: str, url: str) -> str:
    """A block receive cancelled mid-transfer: the node's later bytes never land in the buffer."""
    async with AsyncClient(nodes=[node], token=token, transports="ucx", peer_timeout=10) as client:
        ch = await _channel(client)
        st = await client.stat(url)
        big = st["block_size"]
        req = BlockRequest(parse_source(url), st["etag"], st["size"], big, 0)
        await ch.read_block(req, memoryview(bytearray(big)))  # cached on the node now
        other_req = BlockRequest(req.ref, req.etag, req.size, big, 1)
        await ch.read_block(other_req, memoryview(bytearray(big)))
        for _ in range(20):
            dest = bytearray(big)
            task = asyncio.ensure_future(ch.read_block(req, memoryview(dest)))
            # a concurrent read of another block: withdrawing ours must not fail it
            other = asyncio.ensure_future(ch.read_block(other_req, memoryview(bytearray(big))))
            while not task.done() and not (dest[0] or dest[1] or dest[2]):
                await asyncio.sleep(0)
            if task.done() or dest[-1] or dest[-2]:
                await asyncio.gather(task, other, return_exceptions=True)
                continue  # the whole block was in before we could cancel: try again
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                await other
            except Exception as exc:  # noqa: BLE001 - reported to the test
                return f"a concurrent read failed when another was cancelled: {exc!r}"
            after_cancel = bytes(dest)
            await asyncio.sleep(1.0)
            if bytes(dest) != after_cancel:
                return "UCX wrote into the buffer after the read was cancelled"
            await ch.read_block(req, memoryview(bytearray(big)))  # the channel still works
            return "OK"
        return "SKIP every transfer completed before it could be cancelled mid-way"


def main() -> None:
    scenario, *args = sys.argv[1:]
    io = LoopThread("ucx-child")
    try:
        if scenario == "readinto":
            result = io.run(failed_readinto(*args, io=io))
        else:
            result = io.run(cancelled_receive(*args))
    finally:
        io.close()
    print(result, flush=True)


if __name__ == "__main__":
    main()
