"""Cluster membership from the orchestrator (static list, file, DNS name) plus health checks."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Iterable
from urllib.parse import urlsplit

import aiohttp

from ..placement import Member
from ..transport.wire import HEALTH_PATH

log = logging.getLogger("cachenode.membership")


def member_id_of(url: str) -> str:
    """Default member id: host:port of the node's URL (stable across restarts on one address)."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"member URL {url!r} needs a host and a port, e.g. http://10.0.0.5:8470")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


def parse_member(entry: str) -> Member:
    """'URL' or 'ID=URL' (an explicit, stable member id)."""
    entry = entry.strip()
    mid, sep, url = entry.partition("=")
    if not sep or "://" in mid:
        mid, url = "", entry
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"member {entry!r}: expected http://host:port or ID=http://host:port")
    url = url.rstrip("/")
    return Member(mid or member_id_of(url), url)


def read_peers_file(path: str) -> list[Member]:
    """One member per line (URL or ID=URL); blank lines and # comments ignored."""
    with open(path) as f:
        lines = [ln.split("#", 1)[0].strip() for ln in f]
    return [parse_member(ln) for ln in lines if ln]


class Membership:
    """Who is in the cluster and who answers. No coordination service: every participant
    derives the same list from the same orchestrator-provided source."""

    def __init__(self, self_member: Member | None = None, *, peers: tuple[str, ...] = (),
                 peers_file: str | None = None, peers_dns: str | None = None,
                 refresh_interval: float = 2.0, health_interval: float = 1.0,
                 health_timeout: float = 1.0, token: str | None = None) -> None:
        self.self_member = self_member
        self._static = [parse_member(p) for p in peers]
        self._file = peers_file
        self._file_mtime: float | None = None
        self._file_members: list[Member] = []
        self._dns = peers_dns
        self._dns_members: list[Member] = []
        self._dns_ids: dict[str, str] = {}  # url -> the id that address answered with
        self._refresh = refresh_interval
        self._health_interval = health_interval
        self._health_timeout = health_timeout
        self._token = token
        self._members: dict[str, Member] = {}
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    def set_self(self, member: Member) -> None:
        self.self_member = member
        self._apply([*self._static, *self._file_members, *self._dns_members])

    @property
    def self_id(self) -> str | None:
        return self.self_member.id if self.self_member else None

    def members(self) -> list[Member]:
        return sorted(self._members.values(), key=lambda m: m.id)

    def healthy_ids(self) -> list[str]:
        return [m.id for m in self._members.values() if m.healthy]

    def get(self, member_id: str) -> Member | None:
        return self._members.get(member_id)

    def mark_down(self, member_id: str) -> None:
        m = self._members.get(member_id)
        if m is not None and member_id != self.self_id and m.healthy:
            log.warning("member %s (%s) marked down", member_id, m.url)
            m.healthy = False

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        await self.refresh()
        self._tasks = [asyncio.ensure_future(self._loop(self._refresh, self.refresh)),
                       asyncio.ensure_future(self._loop(self._health_interval, self.check_health))]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self, interval: float, step) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - a bad refresh must not stop the loop
                log.warning("membership %s failed: %s", step.__name__, exc)

    async def refresh(self) -> None:
        """Re-read the peers file if it changed, and re-resolve the DNS name."""
        if self._file:
            try:
                mtime = os.stat(self._file).st_mtime_ns
                if mtime != self._file_mtime:
                    self._file_members = read_peers_file(self._file)
                    self._file_mtime = mtime
            except FileNotFoundError:
                self._file_members = []
            except ValueError as exc:
                log.warning("ignoring peers file %s: %s", self._file, exc)
        if self._dns:
            try:
                self._dns_members = await self._identify(await resolve_dns_members(self._dns))
            except socket.gaierror as exc:
                # A headless Service lists only ready pods, so the first pod starts before its
                # name resolves at all: keep the last list (health checks judge it) and retry.
                log.warning("peers DNS %s: %s; keeping %d known members", self._dns, exc,
                            len(self._dns_members))
        self._apply([*self._static, *self._file_members, *self._dns_members])

    def _apply(self, listed: list[Member]) -> None:
        new: dict[str, Member] = {}
        for m in ([self.self_member] if self.self_member else []) + listed:
            if m.id in new:
                continue
            old = self._members.get(m.id)
            if m is self.self_member:
                new[m.id] = m
            elif old is not None and old.url == m.url and old is not self.self_member:
                new[m.id] = old  # the same object: health probes in flight update it
            else:
                new[m.id] = Member(m.id, m.url, True)
        if set(new) != set(self._members):
            log.info("members: %s", ", ".join(sorted(new)))
        self._members = new

    async def _identify(self, found: list[Member]) -> list[Member]:
        """DNS gives addresses, not ids: ask each new address who it is (its /healthz), so a node
        keeps its --member-id (on Kubernetes the node name) when its pod returns on a new address
        and its disk blocks keep their owner. An address that does not answer yet is left out
        until a later refresh: listing it under a made-up id would rank blocks onto a phantom."""
        self._dns_ids = {u: i for u, i in self._dns_ids.items() if u in {m.url for m in found}}
        new = [m for m in found if m.url not in self._dns_ids]
        if new and self._session is not None:
            answers = await asyncio.gather(*(self._whoami(m.url) for m in new))
            for m, mid in zip(new, answers):
                if mid:
                    # The newest answer for an id wins: a restarted pod's old address may linger
                    # in DNS for a while, and must not keep (or take back) the id.
                    self._dns_ids = {u: i for u, i in self._dns_ids.items() if i != mid}
                    self._dns_ids[m.url] = mid
        return [Member(self._dns_ids[m.url], m.url) for m in found if m.url in self._dns_ids]

    async def _whoami(self, url: str) -> str | None:
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self._health_timeout)
            async with self._session.get(f"{url}{HEALTH_PATH}", timeout=timeout) as r:
                body = await r.json(content_type=None) if r.status == 200 else {}
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None
        # A node that predates ids in /healthz is known by its address, as before.
        return str(body.get("id") or member_id_of(url)) if body.get("ok") else None

    async def check_health(self) -> None:
        others = [m for m in self._members.values() if m.id != self.self_id]
        results = await asyncio.gather(*(self._probe(m) for m in others))
        for m, ok in zip(others, results):
            if self._members.get(m.id) is not m:
                continue  # replaced by a membership change while we probed
            if ok and not m.healthy:
                log.info("member %s (%s) is back", m.id, m.url)
            elif not ok and m.healthy:
                log.warning("member %s (%s) stopped answering", m.id, m.url)
            m.healthy = ok

    async def confirm_down(self, claimed: Iterable[str]) -> frozenset[str]:
        """Of the members a client says are dead, the ones this node also finds dead.

        A client's word alone must not steer routing: "everyone but X is dead" would make X
        fill blocks it does not own (the origin read twice per cluster). Members already down
        here count; healthy ones are probed now, once, with the health timeout.
        """
        out: set[str] = set()
        probe: list[Member] = []
        for mid in set(claimed):
            m = self._members.get(mid)
            if m is None or mid == self.self_id:
                continue
            if m.healthy:
                probe.append(m)
            else:
                out.add(mid)
        results = await asyncio.gather(*(self._probe(m) for m in probe))
        for m, ok in zip(probe, results):
            if not ok:
                self.mark_down(m.id)
                out.add(m.id)
        return frozenset(out)

    async def _probe(self, m: Member) -> bool:
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self._health_timeout)
            async with self._session.get(f"{m.url}{HEALTH_PATH}", timeout=timeout) as r:
                if r.status != 200:
                    return False
                body = await r.json(content_type=None)
                if m.url in self._dns_ids and body.get("id") not in (None, m.id):
                    # Another node now answers at this address (a reused pod IP): it is not
                    # `m`; forget the address so the next refresh asks who is there.
                    self._dns_ids.pop(m.url, None)
                    return False
                m.transports = dict(body.get("transports") or {})
                return True
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return False


async def resolve_dns_members(name_port: str) -> list[Member]:
    """A/AAAA records of `host:port` (a Kubernetes headless Service) as members."""
    host, sep, port = name_port.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--peers-dns {name_port!r}: expected name:port")
    infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    out, seen = [], set()
    for family, _, _, _, addr in infos:
        ip = addr[0]
        if ip in seen:
            continue
        seen.add(ip)
        url = f"http://[{ip}]:{port}" if family == socket.AF_INET6 else f"http://{ip}:{port}"
        out.append(Member(member_id_of(url), url))
    return out
