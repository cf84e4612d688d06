"""UCX on each side's own loop: one eager request per block, blocks placed mid-page, several loops
in one process, and a refused read that ends at once without touching the other reads."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time

import pytest

from cachenode.blocks import BlockRequest, block_count
from cachenode.client.api import AsyncClient
from cachenode.client.iothread import LoopThread
from cachenode.errors import BadRequest
from cachenode.node.compose import build_node
from cachenode.node.config import NodeConfig
from cachenode.placement import Member
from cachenode.source import parse_source
from cachenode.transport import ucx_wire as w
from cachenode.transport.wire import request_params
from helpers import BS, MiB, TOKEN

# ucxx sets UCX_RNDV_THRESH to this before UCX reads its configuration (unless the user set
# it): a message this big or bigger goes by rendezvous, an announcement the receiver answers
# by fetching the bytes, instead of in one piece.
UCXX_RNDV_THRESH = 8192
# Where a kept block starts within its page (cachenode.store.buffers.BLOCK_PAGE_OFFSET).
MID_PAGE = 2048


def _address(view) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_a_block_request_is_one_eager_message():
    """A block request goes to the node in one message, well under the rendezvous threshold,
    even with a long path, token, avoid list and a reply address bigger than a shared-memory
    worker's. (It used to be padded to 8 KiB: by rendezvous, so every block paid one more
    round trip and a fetch by the node before the node even read the request.)"""
    ref = parse_source("http://127.0.0.1:10000/devstoreaccount1/models/llama-3-70b/"
                       "model-00017-of-00030.safetensors")
    fields = request_params(BlockRequest(ref, '"0x8DE1234567890AB"', 5 << 30, 8 << 20, 639))
    fields.update({"token": "t" * 43, "avoid": ["10.0.0.17:8470", "10.0.0.18:8470"], "posted": 1})
    reply_to = os.urandom(2048)
    msg = w.pack_request(2 ** 40, reply_to, fields)
    assert len(msg) < UCXX_RNDV_THRESH // 2
    # the node's receive buffer is REQUEST_SIZE: a shorter message lands at its start
    landed = bytes(msg) + bytes(w.REQUEST_SIZE - len(msg))
    assert w.unpack_request(landed) == (2 ** 40, reply_to, fields)


@pytest.mark.parametrize("bs", [MiB, 2 * MiB])  # plain memory; a private mapping of its own
def test_blocks_a_node_keeps_start_half_a_page_in(tmp_path, bs):
    """A block the node keeps in memory, filled from the origin or read back from its disk,
    starts half a page in: the kernel's copy into a loader's buffer (UCX over shared memory)
    runs 2.5x slower when the buffer starts 1-31 bytes further into its page than the block,
    and loaders' buffers start 0-64 bytes in."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "m.bin").write_bytes(os.urandom(3 * bs + 100))
    config = NodeConfig(cache_dir=str(tmp_path / "cache"), block_size=bs, allow=(f"file://{root}",))
    ref = parse_source(f"file://{root}/m.bin")

    async def served_offsets() -> list[tuple[str, int]]:
        parts = build_node(config)
        await parts.start()
        try:
            st = await parts.service.stat(ref)
            out = []
            for i in range(3):  # whole blocks (the 100-byte tail stays in plain memory)
                block = await parts.service.serve(BlockRequest(ref, st["etag"], st["size"], bs, i))
                try:
                    out.append((block.tier, _address(block.data) % 4096))
                finally:
                    block.close()
            return out
        finally:
            await parts.close()  # its disk writes finish in here

    assert asyncio.run(served_offsets()) == [("origin", MID_PAGE)] * 3
    # a new node over the same cache dir: the blocks come back from disk into memory
    assert asyncio.run(served_offsets()) == [("disk", MID_PAGE)] * 3


async def _read_over_ucx(node_url: str, url: str) -> bytes:
    async with AsyncClient(nodes=[node_url], token=TOKEN, transports="ucx", peer_timeout=5) as client:
        me = (await client.members())[0]
        ch = client.cluster.channel(Member(me.id, me.url, True, me.transports))
        assert type(ch).__name__ == "UcxNodeClient"
        st = await client.stat(url)
        size, bs = st["size"], st["block_size"]
        out = bytearray(size)
        for i in range(block_count(size, bs)):
            req = BlockRequest(parse_source(url), st["etag"], size, bs, i)
            await ch.read_block(req, memoryview(out)[i * bs:min(size, (i + 1) * bs)])
        return bytes(out)


def test_two_event_loops_in_one_process_each_read_over_ucx(blobs, nodes):
    """Each loader's UCX worker is its own, progressed by the loop that made it: a second loop
    in the process reads over UCX too (it used to be refused, ucxx's context being bound to the
    first loop for the life of the process)."""
    node = nodes.start("--block-size", str(BS), "--ucx")
    data = os.urandom(3 * BS + 17)
    url = blobs.put("two-loops.bin", data)
    loops = [LoopThread(f"ucx-loop-{i}") for i in range(2)]
    try:
        for io in loops:  # both open while the other reads
            assert io.run(_read_over_ucx(node.url, url)) == data
    finally:
        for io in loops:
            io.close()


def test_a_refused_ucx_read_ends_at_once_and_leaves_the_other_reads_alone(blobs, nodes):
    """A foreground read posts its body receive with its header's. When the node refuses it,
    the node follows its error with an empty body message, which completes that receive: the
    read fails at once with the node's error, and the reads in flight beside it on the same
    worker go on (withdrawing the one receive would have withdrawn theirs too)."""
    node = nodes.start("--block-size", str(BS), "--ucx")
    data = os.urandom(8 * BS)
    url = blobs.put("refused.bin", data)
    io = LoopThread("ucx-refused")

    async def main() -> float:
        async with AsyncClient(nodes=[node.url], token=TOKEN, transports="ucx", peer_timeout=5) as client:
            me = (await client.members())[0]
            ch = client.cluster.channel(Member(me.id, me.url, True, me.transports))
            st = await client.stat(url)
            ref, out = parse_source(url), bytearray(len(data))

            def req(i: int, bs: int = BS) -> BlockRequest:
                return BlockRequest(ref, st["etag"], st["size"], bs, i)

            await ch.read_block(req(0), memoryview(out)[:BS])  # every block cached: all reads are quick
            await asyncio.gather(*(ch.read_block(req(i), memoryview(out)[i * BS:(i + 1) * BS]) for i in range(8)))
            good = [asyncio.ensure_future(ch.read_block(req(i), memoryview(out)[i * BS:(i + 1) * BS]))
                    for i in range(8)]
            t0 = time.monotonic()
            with pytest.raises(BadRequest):  # not this cluster's block size
                await ch.read_block(req(0, 2 * BS), memoryview(bytearray(2 * BS)))
            took = time.monotonic() - t0
            await asyncio.gather(*good)  # none of them was withdrawn
            assert bytes(out) == data
            return took

    try:
        assert io.run(main()) < 2.5  # half the peer timeout: no wait for a body that never comes
    finally:
        io.close()
