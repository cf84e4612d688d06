"""Transport choice for the loader: one channel per member, UCX where both sides have it, else HTTP."""

from __future__ import annotations

import logging

import aiohttp

from cachenode.placement import Member
from cachenode.routing import Channel
from cachenode.transport.http_client import HttpNodeClient
from cachenode.transport.registry import pick

from .config import ClientConfig

log = logging.getLogger("cachenode.client")


class Channels:
    """Owns the loader's HTTP session, its HTTP clients (metadata always goes over HTTP) and its
    UCX context and clients (made on first use: UCX is an accelerator, TCP always works)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._http: dict[str, HttpNodeClient] = {}
        self._ucx_clients: dict[str, Channel] = {}
        self._ucx = None
        self._ucx_failed = False

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=max(16, 2 * self.config.window))
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def http(self, url: str) -> HttpNodeClient:
        client = self._http.get(url)
        if client is None:
            client = self._http[url] = HttpNodeClient(url, self.config.token, self._http_session(),
                                                      read_timeout=self.config.peer_timeout)
        return client

    def for_member(self, member: Member) -> Channel:
        """The block channel to `member`, by the loader's transport preference."""
        if pick(self.config.transports, member.transports) != "ucx" or self._ucx_failed:
            return self.http(member.url)
        client = self._ucx_clients.get(member.id)
        if client is None:
            try:
                from cachenode.transport.ucx_client import UcxContext, UcxNodeClient

                self._ucx = self._ucx or UcxContext()
                client = UcxNodeClient(member.url, member.transports["ucx"], self.config.token, self._ucx,
                                       timeout=self.config.peer_timeout, max_outstanding=self.config.window)
            except Exception as exc:  # noqa: BLE001 - UCX is an accelerator, TCP always works
                log.warning("UCX unavailable (%s); using TCP", exc)
                self._ucx_failed = True
                return self.http(member.url)
            self._ucx_clients[member.id] = client
        return client

    def digest_seconds(self) -> float:
        """Time every block channel has spent checking digests so far."""
        return sum(c.digest_seconds for c in (*self._http.values(), *self._ucx_clients.values()))

    async def close(self) -> None:
        for client in self._http.values():
            client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
