"""A reply the loader does not expect is a named error that says what came back; every bypass is counted and logged."""

from __future__ import annotations

import asyncio
import logging
import os

import aiohttp
import pytest

import cachenode
from cachenode.blocks import BlockRequest
from cachenode.client.bypass import BypassWarning
from cachenode.errors import PeerUnavailable, UnexpectedReply
from cachenode.source import parse_source
from cachenode.transport.http_client import HttpNodeClient

REPLIES = [
    (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnot here", r"HTTP 404 without a Content-Length"),
    (b"SPAM 12\r\n\r\n", r"bad status line 'SPAM 12'"),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\noops!", r"HTTP 500 and a body that is not JSON: b'oops!'"),
    (b'HTTP/1.1 500 Oops\r\nContent-Length: 36\r\n\r\n{"error":"weird","message":"nobody"}',
     r"unexpected reply, error 'weird': nobody"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n", r"HTTP 200 with Content-Length 'lots'"),
    (b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\n[]", r"malformed error body"),
]


@pytest.mark.parametrize("reply,said", REPLIES, ids=[r[1][:24] for r in REPLIES])
def test_an_unexpected_reply_is_named_with_what_came_back(reply, said):
    async def main():
        async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readuntil(b"\r\n\r\n")
            w.write(reply)
            await w.drain()
            w.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ref = parse_source("az://models/m.bin", default_account="acct")
        async with aiohttp.ClientSession() as session:
            client = HttpNodeClient(f"http://127.0.0.1:{port}", "t", session, read_timeout=5)
            try:
                with pytest.raises(UnexpectedReply, match=said) as err:
                    await client.read_block(BlockRequest(ref, '"e"', 1000, 1000, 0), memoryview(bytearray(1000)))
            finally:
                client.close()
        server.close()
        assert isinstance(err.value, PeerUnavailable)  # the loader tries the next member
        assert f"127.0.0.1:{port}" in str(err.value)

    asyncio.run(main())


def test_every_bypass_is_counted_and_logged(tmp_path, caplog):
    data = os.urandom(3 * 4096 + 1)
    (tmp_path / "m.bin").write_bytes(data)

    async def main():
        async with cachenode.AsyncClient(nodes=["http://127.0.0.1:9"], token="t", block_size=4096) as client:
            with pytest.warns(BypassWarning):
                f = await client.open(f"file://{tmp_path}/m.bin")
                assert await f.read() == data
            return client.bypass_count

    with caplog.at_level(logging.INFO, logger="cachenode.client"):
        count = asyncio.run(main())
    assert count == 1 + 4  # the stat and each of the four blocks
    assert sum("bypass #" in r.getMessage() for r in caplog.records) == count
