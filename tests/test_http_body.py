"""Block bodies leave the node straight from memory: intact, in order, and a reader hanging up
mid-body costs the node nothing."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlencode, urlsplit

import xxhash

import cachenode
from helpers import TOKEN

BS = 4 << 20  # large enough that the socket cannot take a block at once


def _request(path_qs: str, host: str) -> bytes:
    return (f"GET {path_qs} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode()


def _read_response(f) -> tuple[int, dict, bytes]:
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers, f.read(int(headers["content-length"]))


def test_memory_blocks_keep_alive_and_hang_up(blobs, nodes):
    node = nodes.start("--block-size", str(BS))
    data = os.urandom(3 * BS + 123)
    url = blobs.put("big.bin", data)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:  # fills every block
        assert f.read() == data
        etag = f.etag
    u = urlsplit(node.url)

    def path(i: int) -> str:
        q = {"kind": "azure", "account": "devstoreaccount1", "container": blobs.container, "path": "big.bin",
             "etag": etag, "size": str(len(data)), "bs": str(BS), "index": str(i)}
        return f"/v1/block?{urlencode(q)}"

    # three requests pipelined on one connection: each body whole, in order, digest as announced
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(b"".join(_request(path(i), u.netloc) for i in (0, 3, 1)))
        f = s.makefile("rb")
        for i in (0, 3, 1):
            status, headers, body = _read_response(f)
            assert status == 200
            assert headers["x-cachenode-tier"] == "memory"
            assert body == data[i * BS:(i + 1) * BS]
            assert headers["x-cachenode-digest"] == xxhash.xxh3_128_hexdigest(body)

    # a reader that takes a few bytes of a body and hangs up, ten times over
    for _ in range(10):
        with socket.create_connection((u.hostname, u.port), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(_request(path(2), u.netloc))
            s.recv(100)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        assert f.read() == data
