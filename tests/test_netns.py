"""A node behind its own link (network namespace + veth) loses its cable mid-load."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

import cachenode
from cachenode.testing.azurite import connection_string
from cachenode.testing.blobproxy import BlobProxy
from cachenode.testing.netns import VethHost
from cachenode.testing.ports import free_port
from helpers import BS, TOKEN, metric

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="network namespaces need root and iproute2 (CI has both)")


def test_link_cut_mid_load_completes(blobs, nodes, azurite, tmp_path):
    with VethHost("cut") as host:
        origin = BlobProxy(f"http://127.0.0.1:{azurite.port}", host=host.root_ip).start()
        try:
            conn = connection_string(origin.port, host=host.root_ip)
            ports = [free_port() for _ in range(3)]
            urls = [f"http://{host.root_ip}:{ports[0]}", f"http://{host.root_ip}:{ports[1]}",
                    f"http://{host.ns_ip}:{ports[2]}"]
            peers = tmp_path / "peers.txt"
            peers.write_text("\n".join(urls) + "\n")
            common = ("--block-size", f"{BS}", "--peers-file", str(peers), "--peer-timeout", "2")
            a = nodes.start("--host", host.root_ip, *common, port=ports[0], conn_str=conn)
            b = nodes.start("--host", host.root_ip, *common, port=ports[1], conn_str=conn)
            c = nodes.start("--host", host.ns_ip, *common, port=ports[2], conn_str=conn,
                            wrap=host.exec_prefix())
            from conftest import members_of
            deadline = time.monotonic() + 15
            while not all(sum(m["healthy"] for m in members_of(u)) == 3 for u in (a.url, b.url)):
                assert time.monotonic() < deadline, "cluster did not form across the veth link"
                time.sleep(0.1)

            data = os.urandom(120 * BS)
            url = blobs.put("cut.bin", data)
            cachenode.warm(url, nodes=[a.url], token=TOKEN)  # the namespace node owns ~1/3
            got, cut = [0], threading.Event()

            def on_bytes(n: int) -> None:
                got[0] += n
                if got[0] >= len(data) // 3 and not cut.is_set():
                    cut.set()
                    host.cut()

            t0 = time.monotonic()
            with cachenode.open(url, nodes=[a.url], token=TOKEN, on_bytes=on_bytes, peer_timeout=2,
                                readahead=0, window=4) as f:
                assert f.read() == data
            elapsed = time.monotonic() - t0
            assert cut.is_set()
            assert elapsed < 60
            assert metric(a, "cachenode_errors_total{kind=\"peer\"}") + \
                metric(b, "cachenode_errors_total{kind=\"peer\"}") <= 8  # no forwarding storm
            deadline = time.monotonic() + 10
            while any(m["healthy"] for u in (a.url, b.url) for m in members_of(u) if m["url"] == c.url):
                assert time.monotonic() < deadline, "the cut-off node was never marked down"
                time.sleep(0.1)
        finally:
            nodes.stop_all()  # before the namespace goes: nothing may keep calling its address
            origin.stop()
