"""Background reads (prefetch) cannot be used to wedge a node: stuck clients lose their piece slots."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlencode, urlsplit

from cachenode.testing.azurite import AZURITE_ACCOUNT
from helpers import BS, TOKEN, http_get, metrics

READER = """
import hashlib, sys, time, cachenode
url, node, token = sys.argv[1:4]
t0 = time.monotonic()
with cachenode.open(url, nodes=[node], token=token, transports="tcp", background=True, peer_timeout=5) as f:
    data = f.read()
print(time.monotonic() - t0, hashlib.sha256(data).hexdigest())
"""


def _stuck_client(node_url: str, query: dict) -> socket.socket:
    """A client that asks for a background block with a tiny receive window and never reads."""
    u = urlsplit(node_url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((u.hostname, u.port))
    s.sendall((f"GET /v1/block?{urlencode(query)} HTTP/1.1\r\nHost: {u.netloc}\r\n"
               f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
    return s


def test_clients_that_stop_reading_background_blocks_do_not_stall_other_prefetches(nodes, blobs):
    """Two clients that take a background block and never read it would hold both of the node's
    tx piece slots for good; each piece has a deadline (6 peer timeouts), after which the
    connection is dropped and the slot freed, so an honest prefetch still completes."""
    node = nodes.start("--block-size", str(4 * BS), "--max-egress", "50MB/s", "--peer-timeout", "0.5")
    data = os.urandom(6 * 4 * BS)
    url = blobs.put("stuck.bin", data)
    name = url.rsplit("/", 1)[1]
    st = http_get(f"{node.url}/v1/stat?" + urlencode(
        {"kind": "azure", "account": AZURITE_ACCOUNT, "container": blobs.container, "path": name}))[1]
    base = {"kind": "azure", "account": AZURITE_ACCOUNT, "container": blobs.container, "path": name,
            "etag": st["etag"], "size": str(st["size"]), "bs": str(4 * BS), "priority": "background"}
    stuck = [_stuck_client(node.url, {**base, "index": str(i)}) for i in range(3)]
    try:
        time.sleep(1.0)  # they have taken the slots (and the node read the blocks in)
        out = subprocess.run([sys.executable, "-c", READER, url, node.url, TOKEN],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        seconds, digest = out.stdout.split()[-2:]
        assert digest == hashlib.sha256(data).hexdigest()
        # the deadline is 3 s here; stuck for good, the read would wait its patience (30 s) per block
        assert float(seconds) < 20, seconds
        m = metrics(node)
        assert m['cachenode_qos_bytes{class="background"}'] >= len(data)
        assert m.get("cachenode_origin_bytes_total", 0) <= 2 * len(data)
        assert "BypassWarning" not in out.stderr  # the cache answered, not the origin
    finally:
        for s in stuck:
            s.close()
