"""Byte-exact reads through a real node process from Azurite, for awkward sizes and access patterns."""

from __future__ import annotations

import os

import numpy as np
import pytest

import cachenode
from helpers import BS, TOKEN, metric


@pytest.fixture
def node(nodes):
    return nodes.start("--block-size", f"{BS}")


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 3 * BS, 5 * BS + 7])
def test_read_all_is_byte_exact(blobs, node, size):
    data = os.urandom(size)
    url = blobs.put(f"f{size}.bin", data)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        assert f.size == size
        assert f.via == node.url
        assert f.read() == data
        assert f.read() == b""  # at EOF: empty, not an error


def test_readinto_fills_callers_buffer_and_short_read_at_eof(blobs, node):
    data = os.urandom(4 * BS + 99)
    url = blobs.put("r.bin", data)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        arr = np.zeros(len(data) + 1000, dtype=np.uint8)
        n = f.readinto(arr)  # asks for more than the file has: short read
        assert n == len(data)
        assert arr[:n].tobytes() == data
        assert not arr[n:].any()
        # unaligned ranges crossing block boundaries, via seek from every whence
        f.seek(BS - 3)
        assert f.read(10) == data[BS - 3:BS + 7]
        f.seek(5, os.SEEK_CUR)
        assert f.tell() == BS + 12
        assert f.read(2 * BS) == data[BS + 12:3 * BS + 12]
        f.seek(-50, os.SEEK_END)
        assert f.read(1000) == data[-50:]
        f.seek(len(data) + 10)
        assert f.read(10) == b""


def test_negative_seek_and_bad_whence_are_clear_errors(blobs, node):
    url = blobs.put("s.bin", b"x" * 100)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        with pytest.raises(ValueError, match="negative seek position -1"):
            f.seek(-1)
        with pytest.raises(ValueError, match="negative seek position"):
            f.seek(-101, os.SEEK_END)
        with pytest.raises(ValueError, match="whence"):
            f.seek(0, 7)
        assert f.tell() == 0  # failed seeks leave the position alone


def test_sequential_small_reads_use_readahead(blobs, node):
    data = os.urandom(6 * BS)
    url = blobs.put("seq.bin", data)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        chunks = []
        while chunk := f.read(4096 + 17):
            chunks.append(chunk)
    assert b"".join(chunks) == data
    # every block served exactly once even though reads were tiny and unaligned
    assert metric(node, "cachenode_served_bytes_total") == len(data)


def test_async_twin(blobs, node):
    import asyncio

    data = os.urandom(3 * BS + 5)
    url = blobs.put("a.bin", data)

    async def main():
        async with cachenode.AsyncClient(nodes=[node.url], token=TOKEN) as client:
            async with await cachenode.aopen(url, client=client) as f:
                head = await f.read(10)
                f.seek(BS)
                buf = bytearray(BS + 5)
                n = await f.readinto(buf)
                return head, bytes(buf[:n])

    head, tail = asyncio.run(main())
    assert head == data[:10]
    assert tail == data[BS:2 * BS + 5]
