"""Test hosts in network namespaces, joined to the root namespace by a veth pair (root only)."""

from __future__ import annotations

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
    """A namespace `name` reachable at `ns_ip`; the root side of the link has `root_ip`.

    Link-local addresses (169.254/16) on our own veth pair only. A blackhole route for the pair's
    /30 is installed first and removed last, so that while the link is down (or being torn
    down) packets for these addresses are dropped here instead of following the default route
    off the machine.
    """

    def __init__(self, tag: str, root_ip: str, ns_ip: str) -> None:
        suffix = f"{os.getpid() % 100000}"
        self.ns = f"cn{tag}{suffix}"
        self.root_if = f"cr{tag}{suffix}"[:15]
        self.ns_if = f"cn{tag}{suffix}"[:15]
        self.root_ip, self.ns_ip = root_ip, ns_ip

    def create(self) -> "VethHost":
        net = self.root_ip.rsplit(".", 1)[0] + ".0/30"
        self._guard = ("route", "add", "blackhole", net, "metric", "4000")
        try:
            _ip(*self._guard)
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
        if getattr(self, "_guard", None):
            _ip("route", "del", *self._guard[2:], check=False)

    def __enter__(self) -> "VethHost":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.delete()
