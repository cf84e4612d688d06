"""UCX serving goes through the node service: --max-egress, the governor and metrics apply to it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from cachenode.testing.azurite import connection_string
from cachenode.testing.node import NodeProcess
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


BACKGROUND_LOADER = """
import hashlib, sys, time, cachenode
url, node, token, transport = sys.argv[1:5]
with cachenode.open(url, nodes=[node], token=token, transports=transport, background=True) as f:
    t0 = time.monotonic()
    data = f.read()
print(time.monotonic() - t0, len(data), hashlib.sha256(data).hexdigest())
"""


@pytest.mark.parametrize("transport", ["http", "ucx"])
def test_a_background_read_is_paced_and_counted_as_background(blobs, tmp_path, proxy, transport):
    """`background=True` (a prefetch): the node sends it in paced pieces, accounted as
    background traffic, and the bytes arrive exact over either transport."""
    size = 4 * 1024 * 1024
    data = os.urandom(size)
    url = blobs.put(f"prefetch-{transport}.bin", data)
    node = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=connection_string(proxy.port),
                       args=("--ucx", "--block-size", str(BS), "--max-egress", "2MB/s"),
                       env={"UCX_TLS": "sm,cma,tcp"}).start()
    try:
        warm = subprocess.run([sys.executable, "-c", "import sys, cachenode; cachenode.warm(*sys.argv[1:2], "
                               "nodes=[sys.argv[2]], token=sys.argv[3])", url, node.url, TOKEN],
                              capture_output=True, text=True, timeout=120)
        assert warm.returncode == 0, warm.stderr[-2000:]
        before = metrics(node)
        out = subprocess.run([sys.executable, "-c", BACKGROUND_LOADER, url, node.url, TOKEN, transport],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        seconds, n, digest = out.stdout.split()[-3:]
        after = metrics(node)
    finally:
        node.stop()
    assert int(n) == size and digest == hashlib.sha256(data).hexdigest()
    assert float(seconds) >= 1.8, seconds  # 4 MiB at 2 MB/s: paced (a burst is 0.1 s of it)
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert grew['cachenode_qos_bytes{class="background"}'] == size
    assert grew['cachenode_qos_bytes{class="foreground"}'] == 0
    assert grew["cachenode_served_bytes_total"] == size
    assert grew.get("cachenode_ucx_requests_total", 0) == (size // BS if transport == "ucx" else 0)


PREFETCHER = """
import sys, cachenode
with cachenode.open(sys.argv[1], nodes=[sys.argv[2]], token=sys.argv[3], transports="ucx", background=True) as f:
    print("open", flush=True)
    f.read()
"""

FOREGROUND = """
import sys, time, cachenode
with cachenode.open(sys.argv[1], nodes=[sys.argv[2]], token=sys.argv[3], transports="ucx") as f:
    t0 = time.monotonic()
    n = len(f.read())
print(time.monotonic() - t0, n)
"""


def test_a_foreground_ucx_read_does_not_wait_behind_paced_background_transfers(blobs, tmp_path, proxy):
    """Two prefetching loaders keep 16 background requests at the node (as many as it has UCX
    receivers), each a transfer paced at a crawl (idle mode on a 1 Mbit "link"); a loader that
    needs a block now is answered at once, not after the prefetches ahead of it (which, paced
    piece by piece in turn, all end together about 15 s later)."""
    bs = 4 * BS
    big, small = os.urandom(32 * bs), os.urandom(bs)
    big_url, small_url = blobs.put("prefetched.bin", big), blobs.put("needed.bin", small)
    node = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=connection_string(proxy.port),
                       args=("--ucx", "--block-size", str(bs), "--link-speed", "1Mbit", "--idle-iface", "lo"),
                       env={"UCX_TLS": "sm,cma,tcp"}).start()
    prefetchers = []
    try:
        for url in (big_url, small_url):  # cached first, by a foreground read: only sends are paced
            read = subprocess.run([sys.executable, "-c", "import sys, cachenode; cachenode.open(sys.argv[1], "
                                   "nodes=[sys.argv[2]], token=sys.argv[3], transports='tcp').read()",
                                   url, node.url, TOKEN], capture_output=True, text=True, timeout=120)
            assert read.returncode == 0, read.stderr[-2000:]
        for _ in range(2):
            p = subprocess.Popen([sys.executable, "-c", PREFETCHER, big_url, node.url, TOKEN],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            prefetchers.append(p)
            assert p.stdout.readline().strip() == "open", p.stderr.read()[-2000:]
        time.sleep(1.5)  # both have their windows (8 blocks each) at the node
        out = subprocess.run([sys.executable, "-c", FOREGROUND, small_url, node.url, TOKEN],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        seconds, n = out.stdout.split()[-2:]
        assert int(n) == len(small)
        assert float(seconds) < 2.0, seconds  # foreground is never paced: ~0.1 s
        assert all(p.poll() is None for p in prefetchers)  # the prefetches were still running
    finally:
        for p in prefetchers:
            p.kill()
            p.wait()
        node.stop()
