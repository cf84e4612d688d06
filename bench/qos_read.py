"""`cachebench qos --transport http|ucx`: do background reads stay out of the way of other traffic?

The same question as the warm scenario (bench/qos.py), asked of the cache's other background
class: a loader reading a cached checkpoint with `background=True` (a prefetch), over HTTP or
UCX. The node and the reader are two namespaces joined by a veth link shaped with tc tbf in
the node-to-reader direction; an iperf3 flow from the node's namespace to the reader's plays
the job's traffic on that link. The node reaches Azurite over a second, unshaped link from the
root namespace. Needs root and iperf3.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from cachenode.client.admin import scrape
from cachenode.testing.azurite import Azurite, connection_string
from cachenode.testing.netns import HostPair, VethHost
from cachenode.testing.node import NodeProcess
from cachenode.testing.ports import free_port
from cachenode.testing.relay import Relay

from .probe import run_probe, run_together
from .qos import bulk_flow, summarize, too_fast

# The node counts a background piece as it lets it go: its counter, read when the flow
# stops, splits the read into "during" and "after" to within a piece or two.
SENT = 'cachenode_qos_bytes{class="background"}'


def _round(pair: HostPair, node, reader_env: dict, url: str, node_url: str, token: str, transport: str,
           digest: str, link_bytes_per_s: float, flow_seconds: float) -> dict:
    """The flow alone, the flow while a background read runs, then the read alone once the flow stops."""
    alone, alone_ps = bulk_flow(pair.exec_b(), pair.B_IP, flow_seconds, client_at=pair.exec_a())
    during: dict = {}

    def beside_the_read() -> None:
        time.sleep(1.0)  # the read has the link to itself first
        during["flow"] = bulk_flow(pair.exec_b(), pair.B_IP, flow_seconds, client_at=pair.exec_a())
        during["t1"] = time.monotonic()
        during["b1"] = scrape(node.url, token)[SENT]

    # the reader runs in the reader's namespace, opened before its release
    (r,), _ = run_together([{"kind": "background_read", "url": url, "node": node_url, "token": token,
                             "transport": transport, "wrap": list(pair.exec_b()), "env": reader_env}],
                           timeout=900, beside=beside_the_read)
    b2 = scrape(node.url, token)[SENT]
    shared, shared_ps = during["flow"]
    t1, b1 = during["t1"], during["b1"]
    if r["sha256"] != digest:
        raise RuntimeError("the background read returned bytes that differ from the blob")
    if r["t1"] <= t1:
        raise RuntimeError(too_fast("background read"))
    idle = (b2 - b1) / (r["t1"] - t1)
    return {"foreground_alone_gb_per_s": alone / 1e9,
            "foreground_with_cache_gb_per_s": shared / 1e9,
            "cache_idle_gb_per_s": idle / 1e9,
            "foreground_kept": shared / alone,
            "cache_idle_link_share": idle / link_bytes_per_s,
            "read_seconds": r["t1"] - r["t0"],
            "foreground_alone_per_s_mb": [round(x / 1e6, 2) for x in alone_ps],
            "foreground_with_cache_per_s_mb": [round(x / 1e6, 2) for x in shared_ps]}


def prepare(spec: dict) -> Callable[[], dict]:
    """The probe kinds run in the reader's namespace: "warm" (the blob into the node's cache) and
    "background_read", which opens the blob with `background=True`; its measurement reads it
    whole and gives when it started and ended (monotonic clock: the same in every namespace)
    and the bytes' digest."""
    import cachenode

    if spec["kind"] == "warm":
        def warm() -> dict:
            cachenode.warm(spec["url"], nodes=[spec["node"]], token=spec["token"])
            return {}
        return warm

    f = cachenode.open(spec["url"], nodes=[spec["node"]], token=spec["token"], transports=spec["transport"],
                       background=True)
    buf = bytearray(f.size)

    def read() -> dict:
        with f:
            t0 = time.monotonic()
            f.readinto(buf)
            t1 = time.monotonic()
        return {"t0": t0, "t1": t1, "sha256": hashlib.sha256(buf).hexdigest()}
    return read


def run_qos_read(workdir: str | Path, transport: str = "ucx", link: str = "100mbit",
                 link_bytes_per_s: float = 12.5e6, blob_mib: int = 128, headroom: float = 0.05,
                 flow_seconds: float = 8.0, repeat: int = 3, progress=None) -> dict:
    """`repeat` rounds of a background read of one cached blob over `transport` ("http" or "ucx")."""
    base = Path(workdir)
    runs = []
    data = os.urandom(blob_mib << 20)
    digest = hashlib.sha256(data).hexdigest()
    with ExitStack() as stack:
        azurite = stack.enter_context(Azurite(base / "azurite"))
        host = stack.enter_context(VethHost("qr"))
        pair = stack.enter_context(HostPair(host, "qr"))
        pair.shape(link)
        proxy_port = stack.enter_context(Relay(host.root_ip, "127.0.0.1", azurite.port)).port
        token = secrets.token_urlsafe(16)
        port = free_port()
        # UCX over TCP on the shaped link only: shared memory would bypass it (both ends are on
        # one machine), and loopback is a different device in each namespace.
        ucx_env = {"UCX_TLS": "tcp"}
        args = ("--host", "0.0.0.0", "--advertise-url", f"http://{pair.A_IP}:{port}", "--block-size", "1MiB",
                "--memory", f"{2 * blob_mib}MiB", "--link-speed", link.replace("mbit", "Mbit"),
                "--idle-iface", pair.a_if, "--idle-headroom", str(headroom))
        node = stack.enter_context(NodeProcess(
            base / "node", token=token, conn_str=connection_string(proxy_port, host=host.root_ip),
            wrap=host.exec_prefix(), port=port, args=args + (("--ucx",) if transport == "ucx" else ()),
            env={**ucx_env, "UCX_NET_DEVICES": pair.a_if}))
        node.url = f"http://{host.ns_ip}:{port}"  # where the root namespace reaches it
        reader_env = {**ucx_env, "UCX_NET_DEVICES": pair.b_if}
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
            svc.create_container("qos")
            svc.get_blob_client("qos", "r.bin").upload_blob(data)
        url = f"{azurite.endpoint}/qos/r.bin"
        # cached first (over the unshaped link): the rounds move only node -> reader traffic
        try:
            run_probe({"kind": "warm", "url": url, "node": f"http://{pair.A_IP}:{port}", "token": token,
                       "wrap": list(pair.exec_b()), "env": reader_env}, timeout=300)
        except RuntimeError as exc:
            raise RuntimeError(f"warming the blob failed: {exc}") from None
        for i in range(repeat):
            runs.append(_round(pair, node, reader_env, url, f"http://{pair.A_IP}:{port}", token, transport, digest,
                               link_bytes_per_s, flow_seconds))
            if progress:
                progress(i, runs[-1])
        m = scrape(node.url, token)
    out = summarize(runs, link_bytes_per_s, repeat, m)
    out["transport"] = transport
    out["ucx_requests"] = m.get("cachenode_ucx_requests_total", 0.0)
    out["background_bytes"] = m.get(SENT, 0.0)
    return out
