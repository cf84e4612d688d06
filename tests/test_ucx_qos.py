"""UCX serving goes through the node service: --max-egress, the governor and metrics apply to it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from cachenode.bench.services import NodeProcess, connection_string
from helpers import BS, TOKEN, metrics

# A fresh process: ucxx binds to the first event loop of a process, and other tests own theirs.
LOADER = """
import hashlib, sys, time, cachenode
with cachenode.open(sys.argv[1], nodes=[sys.argv[2]], token=sys.argv[3], transports="ucx") as f:
    f.read()  # cold: the node fills from the origin
    f.seek(0)
    t0 = time.monotonic()
    data = f.read()  # warm: only the wire (and the cap) is left
print(time.monotonic() - t0, len(data), hashlib.sha256(data).hexdigest())
"""


def test_ucx_transfer_is_capped_and_counted_like_http(blobs, tmp_path, proxy):
    size = 4 * 1024 * 1024
    data = os.urandom(size)
    url = blobs.put("capped.bin", data)
    node = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=connection_string(proxy.port),
                       args=("--ucx", "--block-size", str(BS), "--max-egress", "2MB/s"),
                       env={"UCX_TLS": "sm,cma,tcp"}).start()
    try:
        out = subprocess.run([sys.executable, "-c", LOADER, url, node.url, TOKEN],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        seconds, n, digest = out.stdout.split()[-3:]
        assert int(n) == size and digest == hashlib.sha256(data).hexdigest()
        # the second 4 MiB at 2 MB/s: 2.1 s; the cap's burst is 0.1 s of traffic (uncapped: ~0.1 s)
        assert float(seconds) >= 1.8, seconds
        m = metrics(node)
    finally:
        node.stop()
    blocks = size // BS
    assert m["cachenode_ucx_requests_total"] == 2 * blocks  # it really went over UCX
    assert m["cachenode_served_bytes_total"] == 2 * size
    assert m['cachenode_qos_bytes{class="foreground"}'] == 2 * size
    assert m["cachenode_qos_throttled_seconds"] > 3.0
