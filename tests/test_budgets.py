"""Hard budgets: a node's memory stays within --memory plus its in-flight slots, whatever is asked."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

from cachenode.testing.azurite import AZURITE_ACCOUNT
from helpers import MiB, TOKEN, http_get


def _rss(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_memory_stays_within_budget_under_a_hostile_request_mix(nodes, blob_service, azurite):
    """Many clients at once: every block of a blob three times the memory budget, a huge block
    size, made-up sizes. Peak RSS above the idle process stays within --memory + slots x block
    size + a bounded overhead (responses in flight hold the blocks they send)."""
    mem, bs = 32 * MiB, 1 * MiB
    node = nodes.start("--block-size", str(bs), "--memory", "32MiB")
    container = f"bud{os.getpid()}"
    blob_service.create_container(container)
    size = 3 * mem
    blob_service.get_blob_client(container, "big.bin").upload_blob(os.urandom(size))
    src = {"kind": "azure", "account": AZURITE_ACCOUNT, "container": container, "path": "big.bin"}
    st = http_get(f"{node.url}/v1/stat?{urlencode(src)}")[1]
    idle = _rss(node.proc.pid)

    def get(q):
        return http_get(f"{node.url}/v1/block?{urlencode({**src, **q})}")[0]

    n = size // bs
    good = [{"etag": st["etag"], "size": str(size), "bs": str(bs), "index": str(i)} for i in range(n)]
    huge = [{"etag": st["etag"], "size": str(size), "bs": str(256 * MiB), "index": "0"}] * 8
    made_up = [{"etag": st["etag"], "size": str(10**12), "bs": str(bs), "index": str(i)} for i in range(0, n, 7)]
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(get, good + huge + made_up + good))
    assert statuses[:n] == [200] * n
    assert set(statuses[n:n + 8]) == {400}  # bs is the node's
    peak = _rss(node.proc.pid, "VmHWM") - idle
    slots = max(4, mem // 4 // bs)
    overhead = 32 * bs + 48 * MiB  # 32 responses in flight, allocator and runtime slack
    assert peak <= mem + (slots + max(1, slots // 4)) * bs + overhead, (peak / MiB, idle / MiB)
    assert http_get(f"{node.url}/healthz", token=TOKEN)[0] == 200


def test_silent_connections_cannot_use_up_the_node(nodes):
    """Clients that connect and send nothing, or one byte: the node keeps at most
    --max-connections of them, closes each after --idle-timeout, and serves again after."""
    import socket
    import time
    from urllib.parse import urlsplit

    node = nodes.start("--max-connections", "16", "--idle-timeout", "1.5")
    u = urlsplit(node.url)
    fds = lambda: len(os.listdir(f"/proc/{node.proc.pid}/fd"))  # noqa: E731
    base = fds()
    socks = []
    for i in range(60):
        s = socket.create_connection((u.hostname, u.port), timeout=5)
        if i % 2:
            s.sendall(b"G")  # a request that never completes
        socks.append(s)
    time.sleep(0.3)
    assert fds() <= base + 16 + 2, (fds(), base)  # over the cap: closed on accept
    deadline = time.monotonic() + 10
    while fds() > base + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fds() <= base + 1, (fds(), base)  # the idle ones timed out
    for s in socks:
        s.settimeout(1)
        try:
            assert s.recv(1) == b""  # closed by the node (or refused outright)
        except ConnectionResetError:
            pass
        s.close()
    assert http_get(f"{node.url}/healthz")[0] == 200


def test_object_put_batches_being_received_stay_under_their_byte_bound():
    """A put batch is held whole until stored: batches wait so their bytes stay under the bound."""
    import asyncio

    from cachenode.node.budgets import Budgets

    async def main(sizes):
        b = Budgets(1 << 30, 1 << 20, object_puts=100)
        inside, most = 0, 0

        async def put(n: int) -> None:
            nonlocal inside, most
            async with b.object_puts(n):
                inside += n
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= n

        await asyncio.gather(*(put(n) for n in sizes))
        return most

    assert asyncio.run(main([60, 60, 60, 30])) == 90  # never two 60s at once: 60 + 30 at most
    assert asyncio.run(main([500, 60])) == 500        # a batch over the bound goes alone
