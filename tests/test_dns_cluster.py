"""A Kubernetes-shaped cluster on one machine: nodes in namespaces found through a headless-Service DNS name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from cachenode.blocks import block_key
from cachenode.deploy import kubernetes as k8s
from cachenode.placement import rank
from cachenode.source import parse_source
from cachenode.testing.azurite import connection_string
from cachenode.testing.cluster import members_of
from cachenode.testing.netns import VethHost
from cachenode.testing.node import NodeProcess
from helpers import BS, TOKEN

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="network namespaces need root and iproute2 (CI has both)")

VALUES = "namespace: test\nname: cachenode\ncache: {blockSize: 64KiB}\npeerTimeout: 2\n"
PORT = 8470  # every pod has its own address, so all use the manifest's port, as on Kubernetes
NBLOCKS = 60


class Zone(BaseResolver):
    """The headless Service's A records, changed by the test as Kubernetes changes Endpoints."""

    def __init__(self, name: str) -> None:
        self.name = DNSLabel(name)
        self.addresses: list[str] = []
        self.lock = threading.Lock()

    def set(self, addresses: list[str]) -> None:
        with self.lock:
            self.addresses = list(addresses)

    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        if q.qname != self.name:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if q.qtype in (QTYPE.A, QTYPE.ANY):
            with self.lock:
                for ip in self.addresses:  # TTL 1: like CoreDNS's 5s for headless Services, only faster
                    reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(ip), ttl=1))
        return reply  # AAAA: an empty NOERROR answer, so getaddrinfo returns the A records


class Pod:
    """One node "pod": its own namespace and address, a DNS server reachable from it, and a
    resolv.conf naming that server (bind-mounted inside the node's private mount namespace)."""

    def __init__(self, tag: str, zone: Zone, workdir: Path) -> None:
        self.host = VethHost(tag).create()
        try:
            # Per-interface forwarding (not the machine-wide switch) lets pods reach each other
            # through the root namespace; it goes away with the link.
            Path(f"/proc/sys/net/ipv4/conf/{self.host.root_if}/forwarding").write_text("1")
            subprocess.run([*self.host.exec_prefix(), "ip", "route", "add", "default", "via",
                            self.host.root_ip], check=True, capture_output=True, timeout=30)
            # A pod's resolver: port 53 on the root side of its own link (a namespace cannot
            # reach the root namespace's loopback).
            self.dns = DNSServer(zone, address=self.host.root_ip, port=53,
                                 logger=DNSLogger("-request,-reply,-truncated", logf=lambda s: None))
            self.dns.start_thread()
            self.resolv = workdir / f"resolv-{tag}.conf"
            self.resolv.write_text(f"nameserver {self.host.root_ip}\noptions timeout:1 attempts:3\n")
        except BaseException:
            self.host.delete()
            raise

    @property
    def ip(self) -> str:
        return self.host.ns_ip

    def wrap(self) -> tuple[str, ...]:
        return (*self.host.exec_prefix(), "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(self.resolv))

    def delete(self) -> None:
        self.dns.stop()
        self.host.delete()


class K8sCluster:
    """Node processes started with the DaemonSet's own command, one per pod, found through DNS."""

    def __init__(self, tmp_path: Path, origin_host: str, origin_port: int) -> None:
        self.tmp = tmp_path
        self.values = k8s.load_values(VALUES)
        self.service = k8s.service_dns(self.values)
        self.zone = Zone(self.service)
        self.conn = connection_string(origin_port, host=origin_host)
        self.pods: dict[str, Pod] = {}
        self.nodes: dict[str, NodeProcess] = {}
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")
        self._k = Counter()

    def pod_args(self, node_name: str, pod_ip: str) -> list[str]:
        """The DaemonSet container's `serve` arguments, expanded as the kubelet does, with the
        hostPath and Secret mounts pointed at this test's files."""
        (container,) = k8s.daemonset(self.values)["spec"]["template"]["spec"]["containers"]
        args = [a.replace("$(NODE_NAME)", node_name).replace("$(POD_IP)", pod_ip) for a in container["command"]]
        args = args[args.index("serve") + 1:]
        swap = {"--cache-dir": str(self.tmp / node_name), "--token-file": str(self.token_file)}
        return [swap.get(args[i - 1], a) if i else a for i, a in enumerate(args)]

    def start(self, name: str) -> NodeProcess:
        self._k[name] += 1
        pod = Pod(f"{name[-1]}r{self._k[name]}", self.zone, self.tmp)
        self.pods[name] = pod
        node = NodeProcess(self.tmp / name, token=TOKEN, conn_str=self.conn, port=PORT, wrap=pod.wrap(),
                           args=tuple(self.pod_args(name, pod.ip)))
        node.start()
        self.nodes[name] = node
        return node

    def publish(self) -> None:
        """Endpoints: the addresses of the pods that are running (ready)."""
        self.zone.set([self.pods[n].ip for n in sorted(self.nodes) if self.nodes[n].proc is not None])

    def stop(self, name: str, delete_pod: bool = True) -> None:
        self.nodes[name].stop()
        self.publish()
        if delete_pod:
            self.pods.pop(name).delete()

    def wait_view(self, names: list[str], timeout: float = 30.0) -> None:
        """Every running node sees exactly `names`, healthy, at their current pod addresses."""
        want = {n: f"http://{self.pods[n].ip}:{PORT}" for n in names}
        deadline = time.monotonic() + timeout
        while True:
            views = {}
            for n, node in self.nodes.items():
                if node.proc is None:
                    continue
                try:
                    # node.url is the listen address (0.0.0.0); the pod is reached at its own.
                    views[n] = {m["id"]: m["url"] for m in members_of(f"http://{self.pods[n].ip}:{PORT}", TOKEN)
                                if m["healthy"]}
                except OSError as exc:
                    views[n] = str(exc)
            if all(v == want for v in views.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"views never settled on {want}: {views}")
            time.sleep(0.2)

    def load(self, url: str, via: str) -> dict:
        """A loader process on `via`'s machine, given only the Service name, reads `url`."""
        script = (
            "import cachenode, hashlib, json, sys\n"
            "url, node, token = sys.argv[1:]\n"
            "with cachenode.Client(nodes=[node], token=token) as c:\n"
            "    members = [m.to_json() for m in c.members()]\n"
            "    stat = c.stat(url)\n"
            "with cachenode.open(url, nodes=[node], token=token, peer_timeout=2) as f:\n"
            "    data = f.read()\n"
            "print(json.dumps({'sha': hashlib.sha256(data).hexdigest(), 'members': members, 'stat': stat}))\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}
        out = subprocess.run([*self.pods[via].wrap(), sys.executable, "-c", script, url,
                              f"http://{self.service}:{PORT}", TOKEN], capture_output=True, text=True,
                             timeout=120, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        for pod in self.pods.values():
            pod.delete()


def owners(url: str, stat: dict, ids: list[str]) -> dict[int, str]:
    ref = parse_source(url)
    assert stat["block_size"] == BS
    return {i: rank(block_key(ref, stat["etag"], stat["size"], BS, i), ids)[0] for i in range(NBLOCKS)}


def test_discovery_restart_and_scale_through_dns(blobs, proxy, azurite, tmp_path):
    from cachenode.testing.blobproxy import BlobProxy

    data = os.urandom(NBLOCKS * BS)
    url = blobs.put("dns.bin", data)
    sha = hashlib.sha256(data).hexdigest()
    path = blobs.path("dns.bin")

    first = VethHost("dnso").create()  # the origin proxy needs an address every pod can reach
    origin = BlobProxy(f"http://127.0.0.1:{azurite.port}", host=first.root_ip).start()
    cluster = K8sCluster(tmp_path, first.root_ip, origin.port)
    try:
        names = ["node-0", "node-1", "node-2"]
        for n in names:
            cluster.start(n)
        cluster.publish()
        cluster.wait_view(names)

        # (1) A loader given only the Service name finds every member, by node name.
        got = cluster.load(url, via="node-0")
        assert got["sha"] == sha
        assert {m["id"]: m["url"] for m in got["members"]} == \
            {n: f"http://{cluster.pods[n].ip}:{PORT}" for n in names}
        assert origin.reads_of(path) == NBLOCKS  # cold: every block once, by its owner
        assert max(origin.ranges_of(path).values()) == 1
        assert cluster.load(url, via="node-1")["sha"] == sha
        assert origin.reads_of(path) == NBLOCKS  # warm: 0 origin bytes

        # (2) Rolling restart: each pod comes back on a new address with its node name and hostPath.
        for n in names:
            old_ip = cluster.pods[n].ip
            cluster.stop(n)
            cluster.start(n)
            assert cluster.pods[n].ip != old_ip
            cluster.publish()
            cluster.wait_view(names)
        assert cluster.load(url, via="node-2")["sha"] == sha
        assert origin.reads_of(path) == NBLOCKS  # the restarted nodes' disk blocks kept their owners

        # (3) Scale 3 -> 4: only the blocks the newcomer now wins are read from the origin.
        before = owners(url, got["stat"], names)
        after = owners(url, got["stat"], names + ["node-3"])
        moved = [i for i in range(NBLOCKS) if after[i] != before[i]]
        assert moved and all(after[i] == "node-3" for i in moved)
        cluster.start("node-3")
        cluster.publish()
        cluster.wait_view(names + ["node-3"])
        assert cluster.load(url, via="node-3")["sha"] == sha
        assert origin.reads_of(path) == NBLOCKS + len(moved)
        assert max(origin.ranges_of(path).values()) == 2  # a moved block: once per owner, ever

        # (4) Scale 4 -> 3: the pod is gone (its address drops packets) before DNS and the
        # health checks notice.
        cluster.nodes["node-3"].stop()
        cluster.pods["node-3"].host.cut()
        t0 = time.monotonic()
        assert cluster.load(url, via="node-0")["sha"] == sha
        stale_load = time.monotonic() - t0
        cluster.publish()
        cluster.wait_view(names)
        # Its blocks went to the next in rank: their owner among 3, which still holds them.
        reads = origin.reads_of(path)
        assert reads == NBLOCKS + len(moved)
        assert cluster.load(url, via="node-1")["sha"] == sha
        assert origin.reads_of(path) == reads
        print(f"\nblocks {NBLOCKS} x {BS}, moved to node-3: {len(moved)}, load while stale: {stale_load:.2f}s, "
              f"origin reads total: {reads}")
    finally:
        cluster.close()
        origin.stop()
        first.delete()
