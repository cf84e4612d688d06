"""Hard budgets: a node's memory stays within --memory plus its in-flight slots, whatever is asked."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

from cachenode.bench.services import AZURITE_ACCOUNT
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
