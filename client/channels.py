"""Transport choice for the loader: one channel per member, UCX where both sides have it, else HTTP."""

from __future__ import annotations

import logging

from cachenode.placement import Member
from cachenode.transport.base import ChannelOptions, ClientChannel, Connector
from cachenode.transport.http_client import HttpNodeClient
from cachenode.transport.registry import LOCAL, TCP, Registry, default_registry

from .config import ClientConfig

log = logging.getLogger("cachenode.client")


class Channels:
    """The loader's channels, made through the transport registry: HTTP ones (metadata always
    goes over HTTP) and, made on first use, those of a faster transport both sides have (UCX is
    an accelerator, TCP always works)."""

    def __init__(self, config: ClientConfig, registry: Registry | None = None) -> None:
        self.config = config
        self._registry = registry or default_registry()
        self._options = ChannelOptions(token=config.token, timeout=config.peer_timeout, window=config.window,
                                       connections_per_node=max(16, 2 * config.window))
        self._connectors: dict[str, Connector] = {}
        self._failed: set[str] = set()  # transports that could not start here: TCP from then on

    def _connector(self, name: str) -> Connector:
        connector = self._connectors.get(name)
        if connector is None:
            connector = self._connectors[name] = self._registry.connector(name, self._options)
        return connector

    def http(self, url: str) -> HttpNodeClient:
        return self._connector(TCP).channel(url)

    def for_member(self, member: Member) -> ClientChannel:
        """The block channel to `member`, by the loader's transport preference."""
        name = self._registry.pick(self.config.transports, member.transports)
        if name == TCP or name in self._failed:
            return self.http(member.url)
        try:
            return self._connector(name).channel(member.url, member.transports[name])
        except Exception as exc:  # noqa: BLE001 - an accelerator that fails leaves TCP, which always works
            log.warning("%s unavailable (%s); using TCP", name.upper(), exc)
            self._failed.add(name)
            return self.http(member.url)

    def host_node(self) -> ClientChannel | None:
        """The channel to this host's node (config.local_socket), None if there is none or it
        has failed (the network transports then serve every block)."""
        path = self.config.local_socket
        if not path or LOCAL in self._failed or not self._registry.available(LOCAL):
            return None
        return self._connector(LOCAL).channel(f"unix:{path}", path)

    def host_node_failed(self, exc: Exception) -> None:
        if LOCAL not in self._failed:
            log.warning("this host's node at %s failed (%s); reading over the network from now on",
                        self.config.local_socket, exc)
            self._failed.add(LOCAL)

    def digest_seconds(self) -> float:
        """Time every block channel has spent checking digests so far."""
        return sum(c.digest_seconds() for c in self._connectors.values())

    async def close(self) -> None:
        for connector in self._connectors.values():
            await connector.close()
        self._connectors.clear()
