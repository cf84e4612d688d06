"""Test hosts in network namespaces, joined to the root namespace by a veth pair (root only)."""

from __future__ import annotations

import json
import os
import subprocess


def _run(*cmd: str, ns: str | None = None, check: bool = True) -> None:
    """Run an iproute2 command here, or inside namespace `ns`."""
    prefix = () if ns is None else ("ip", "netns", "exec", ns)
    subprocess.run([*prefix, *cmd], check=check, capture_output=True, timeout=30)


def _ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    _run("ip", *args, ns=ns, check=check)


def _tc(*args: str, ns: str | None = None) -> None:
    _run("tc", *args, ns=ns)


class VethHost:
    """A namespace reachable at `ns_ip`; the root side of the link has `root_ip`.

    Link-local addresses (169.254/16) on our own veth pair only, a /30 per link chosen when the
    link is created, so that two runs on one machine (two benchmarks, a test suite and a
    benchmark) never share one. A blackhole route for the /30 is installed first, doubling as
    the claim on it, and removed last, so that while the link is down (or being torn down)
    packets for these addresses are dropped here instead of following the default route off
    the machine.
    """

    def __init__(self, tag: str) -> None:
        suffix = str(os.getpid())  # whose it is: tests tell a leak from a concurrent run by it
        self.ns = f"cn{tag}{suffix}"
        self.root_if = f"cr{tag}{suffix}"[:15]
        self.ns_if = f"cn{tag}{suffix}"[:15]
        self.root_ip = self.ns_ip = ""
        self._guard: tuple[str, ...] | None = None

    def _claim_net(self) -> None:
        """Claim a free 169.254.x.y/30: the blackhole route add fails if another run holds it."""
        start = (os.getpid() * 7919 + sum(map(ord, self.ns))) % (250 * 64)
        for k in range(250 * 64):
            n = (start + k) % (250 * 64)
            third, fourth = 2 + n // 64, 4 * (n % 64)
            net = f"169.254.{third}.{fourth}/30"
            guard = ("route", "add", "blackhole", net, "metric", "4000")
            if subprocess.run(["ip", *guard], capture_output=True, timeout=30).returncode == 0:
                self._guard = guard
                self.root_ip, self.ns_ip = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
                return
        raise RuntimeError("no free 169.254.0.0/16 /30 left for a test link")

    def create(self) -> "VethHost":
        try:
            self._claim_net()
            _ip("netns", "add", self.ns)
            _ip("link", "add", self.root_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.ns)
            _ip("addr", "add", f"{self.root_ip}/30", "dev", self.root_if)
            _ip("link", "set", self.root_if, "up")
            _ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, ns=self.ns)
            _ip("link", "set", self.ns_if, "up", ns=self.ns)
            _ip("link", "set", "lo", "up", ns=self.ns)
        except BaseException:
            self.delete()
            raise
        return self

    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns)

    def net_prefix(self) -> tuple[str, ...]:
        """A command prefix that joins only the network namespace. `ip netns exec` also gives
        the command a mount namespace of its own, so a FUSE mount made under it would be
        invisible to every other process; under this prefix it is the host's."""
        return ("nsenter", f"--net=/run/netns/{self.ns}")

    def rx_bytes(self) -> int:
        """Bytes received so far by every interface of the namespace but loopback: what entered
        this test host (frames as the kernel counts them, headers included)."""
        out = subprocess.run(["ip", "-n", self.ns, "-j", "-s", "link", "show"], check=True,
                             capture_output=True, text=True, timeout=30).stdout
        return sum(link["stats64"]["rx"]["bytes"] for link in json.loads(out)
                   if link.get("link_type") != "loopback")

    def shape(self, rate: str, burst_bytes: int = 64 << 10, both_ways: bool = False) -> None:
        """Rate-limit the link with tc tbf, e.g. "100mbit": traffic into this host, and with
        `both_ways` also traffic out of it. Fast links need a burst of ~10 ms of traffic, or the
        kernel's timer granularity, not the rate, sets the speed."""
        tbf = ("tbf", "rate", rate, "burst", str(burst_bytes), "latency", "50ms")
        _tc("qdisc", "replace", "dev", self.root_if, "root", *tbf)
        if both_ways:
            _tc("qdisc", "replace", "dev", self.ns_if, "root", *tbf, ns=self.ns)

    def cut(self) -> None:
        """Pull the cable at the far end: packets to the namespace are dropped, not refused."""
        _ip("link", "set", self.ns_if, "down", ns=self.ns)

    def delete(self) -> None:
        _ip("link", "del", self.root_if, check=False)  # also removes the peer end
        _ip("netns", "del", self.ns, check=False)
        if self._guard:
            _ip("route", "del", *self._guard[2:], check=False)
            self._guard = None

    def __enter__(self) -> "VethHost":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.delete()


class HostPair:
    """A second namespace, joined to a VethHost's by a veth pair of its own: a link between two
    test hosts that never touches the root namespace.

    Its addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarking,
    because UCX ignores link-local (169.254/16) addresses. Neither end is in the root
    namespace, so nothing else on the machine can reach or route to them, and two runs (each
    in namespaces of its own) never clash.
    """

    A_IP, B_IP = "198.18.0.1", "198.18.0.2"

    def __init__(self, host: VethHost, tag: str) -> None:
        suffix = str(os.getpid())
        self.a_ns, self.b_ns = host.ns, f"cp{tag}{suffix}"
        self.a_if = f"pa{tag}{suffix}"[:15]
        self.b_if = f"pb{tag}{suffix}"[:15]
        self._made = False

    def create(self) -> "HostPair":
        try:
            _ip("netns", "add", self.b_ns)
            self._made = True
            _ip("link", "add", self.a_if, "type", "veth", "peer", "name", self.b_if)
            _ip("link", "set", self.a_if, "netns", self.a_ns)
            _ip("link", "set", self.b_if, "netns", self.b_ns)
            _ip("addr", "add", f"{self.A_IP}/30", "dev", self.a_if, ns=self.a_ns)
            _ip("link", "set", self.a_if, "up", ns=self.a_ns)
            _ip("addr", "add", f"{self.B_IP}/30", "dev", self.b_if, ns=self.b_ns)
            _ip("link", "set", self.b_if, "up", ns=self.b_ns)
            _ip("link", "set", "lo", "up", ns=self.b_ns)
        except BaseException:
            self.delete()
            raise
        return self

    def exec_a(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.a_ns)

    def exec_b(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.b_ns)

    def shape(self, rate: str, burst_bytes: int = 64 << 10) -> None:
        """Rate-limit traffic from A to B (tc tbf on A's end)."""
        _tc("qdisc", "replace", "dev", self.a_if, "root", "tbf", "rate", rate, "burst", str(burst_bytes),
            "latency", "50ms", ns=self.a_ns)

    def delete(self) -> None:
        _ip("link", "del", self.a_if, ns=self.a_ns, check=False)  # also removes B's end
        _ip("link", "del", self.a_if, check=False)  # if it failed before moving
        if self._made:
            _ip("netns", "del", self.b_ns, check=False)
            self._made = False

    def __enter__(self) -> "HostPair":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.delete()
