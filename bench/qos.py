"""`cachebench qos`: does background warming stay out of the way of other traffic on a link?

A node in its own network namespace sits behind a veth link shaped with tc tbf; its origin
(Azurite behind a proxy) is on the far side of that link, so warming pulls across it. A bulk
TCP flow across the same link plays the GPU job's traffic. Needs root (CI and these VMs have it).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from cachenode.node.metrics import scrape

from .netns import VethHost
from .relay import Relay
from .services import Azurite, NodeProcess, connection_string, free_port

ROOT_IP, NS_IP = "169.254.214.1", "169.254.214.2"

_RECEIVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20); n = 0; t0 = None
while True:
    k = c.recv_into(buf)
    if not k: break
    if t0 is None: t0 = time.monotonic()
    n += k
print(n, time.monotonic() - t0, flush=True)
"""


def bulk_flow(host: VethHost, seconds: float) -> float:
    """A TCP sender in the root namespace to a receiver in the node's; returns bytes/s received."""
    port = free_port()
    rx = subprocess.Popen([*host.exec_prefix(), sys.executable, "-c", _RECEIVER, host.ns_ip, str(port)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().startswith("listening")
        payload = bytes(1 << 16)
        with socket.create_connection((host.ns_ip, port), timeout=10) as s:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                s.sendall(payload)
        nbytes, elapsed = rx.stdout.readline().split()
        rx.wait(30)
        return int(nbytes) / float(elapsed)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()


def run_qos(workdir: str | Path, link: str = "100mbit", link_bytes_per_s: float = 12.5e6,
            blob_mib: int = 128, headroom: float = 0.05, flow_seconds: float = 8.0) -> dict:
    import cachenode

    base = Path(workdir)
    with ExitStack() as stack:
        azurite = stack.enter_context(Azurite(base / "azurite"))
        host = stack.enter_context(VethHost("qos", ROOT_IP, NS_IP))
        host.shape(link)
        # a relay on the link's root address to Azurite on 127.0.0.1 (which stays private)
        proxy_port = stack.enter_context(Relay(ROOT_IP, "127.0.0.1", azurite.port)).port
        token = secrets.token_urlsafe(16)
        node = stack.enter_context(NodeProcess(
            base / "node", token=token, conn_str=connection_string(proxy_port, host=ROOT_IP),
            wrap=host.exec_prefix(), port=free_port(),
            args=("--host", NS_IP, "--block-size", "1MiB", "--link-speed", link.replace("mbit", "Mbit"),
                  "--idle-iface", host.ns_if, "--idle-headroom", str(headroom))))
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
            svc.create_container("qos")
            svc.get_blob_client("qos", "w.bin").upload_blob(bytes(blob_mib << 20))
        url = f"{azurite.endpoint}/qos/w.bin"

        alone = bulk_flow(host, flow_seconds)
        warm_done: list[float] = []
        t_warm = time.monotonic()
        warm = threading.Thread(target=lambda: (cachenode.warm(url, nodes=[node.url], token=token),
                                                warm_done.append(time.monotonic())))
        warm.start()
        time.sleep(1.0)  # the warm has the link to itself first
        shared = bulk_flow(host, flow_seconds)
        t1 = time.monotonic()
        b1 = scrape(node.url, token)["cachenode_origin_bytes_total"]
        warm.join(600)
        b2 = scrape(node.url, token)["cachenode_origin_bytes_total"]
        idle_rate = (b2 - b1) / (warm_done[0] - t1) if warm_done and warm_done[0] > t1 else 0.0
        m = scrape(node.url, token)
    return {"link_gbit": link_bytes_per_s * 8 / 1e9,
            "foreground_alone_gb_per_s": alone / 1e9,
            "foreground_with_cache_gb_per_s": shared / 1e9,
            "cache_idle_gb_per_s": idle_rate / 1e9,
            "foreground_kept": shared / alone,
            "cache_idle_link_share": idle_rate / link_bytes_per_s,
            "warm_seconds": (warm_done[0] - t_warm) if warm_done else None,
            "throttled_seconds": m.get("cachenode_qos_throttled_seconds", 0.0)}


if __name__ == "__main__":
    print(json.dumps(run_qos(tempfile.mkdtemp()), indent=2))
