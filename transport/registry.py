"""Transport registry: the backends (HTTP, UCX, ...) by name, the one place their clients and servers are made."""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Iterable

from .base import Backend, ChannelOptions, Connector, NodeApi, Server, ServerOptions
from .http_client import HttpConnector

# scheme -> transport name. Nodes advertise the names they listen on; URLs use the schemes.
SCHEMES = {"http": "tcp", "tcp": "tcp", "ucx": "ucx"}
DEFAULT_PREFERENCE = ("ucx", "tcp")
# What every node serves and every owner can fall back to: metadata always goes over it.
TCP = "tcp"
# Same-host hand-over: not a member's advertised transport, so never picked by preference.
LOCAL = "local"


class HttpBackend:
    """HTTP/1.1 over TCP: always available."""

    name = TCP

    def available(self) -> bool:
        return True

    def connector(self, options: ChannelOptions) -> HttpConnector:
        return HttpConnector(options)

    def server(self, service: NodeApi, options: ServerOptions) -> Server:
        # Loaded here: a loader never serves, and need not import aiohttp's server side.
        from .http_listener import HttpServer

        return HttpServer(service, options)


class UcxBackend:
    """UCX (ucxx): optional, so its modules load only when a client or server is made."""

    name = "ucx"

    def available(self) -> bool:
        return importlib.util.find_spec("ucxx") is not None

    def connector(self, options: ChannelOptions) -> Connector:
        from .ucx_client import UcxConnector

        return UcxConnector(options)

    def server(self, service: NodeApi, options: ServerOptions) -> Server:
        from .ucx_server import UcxServer

        # Each reply endpoint holds descriptors (a socket on TCP lanes): the HTTP cap holds here too.
        return UcxServer(service, max_endpoints=options.max_connections)


class LocalBackend:
    """This host's loaders over a unix socket, a memfd per block (Linux): never advertised to
    other members, a loader finds it by path (CACHENODE_LOCAL_SOCKET)."""

    name = LOCAL

    def available(self) -> bool:
        return hasattr(os, "memfd_create") and hasattr(socket, "send_fds")

    def connector(self, options: ChannelOptions) -> Connector:
        from .local_client import LocalConnector

        return LocalConnector(options)

    def server(self, service: NodeApi, options: ServerOptions) -> Server:
        from .local_server import LocalServer

        if not options.local_socket:
            raise ValueError("the local transport needs a socket path (--local-socket)")
        return LocalServer(service, options.local_socket, max_connections=options.max_connections)


class Registry:
    """Backends by name. Made by whoever composes a loader or node (no process-wide registry),
    so tests can add one, such as the in-process transport."""

    def __init__(self, backends: Iterable[Backend]) -> None:
        self._backends = {b.name: b for b in backends}

    def names(self) -> tuple[str, ...]:
        return tuple(self._backends)

    def available(self, name: str) -> bool:
        """Whether this process can speak `name`."""
        backend = self._backends.get(name)
        return backend is not None and backend.available()

    def pick(self, preference: tuple[str, ...], offered: dict[str, str]) -> str:
        """The first preferred transport that the member offers and this process can use."""
        for name in preference:
            if name == TCP or (name in offered and self.available(name)):
                return name
        return TCP

    def connector(self, name: str, options: ChannelOptions) -> Connector:
        return self._backend(name).connector(options)

    def server(self, name: str, service: NodeApi, options: ServerOptions) -> Server:
        return self._backend(name).server(service, options)

    def _backend(self, name: str) -> Backend:
        backend = self._backends.get(name)
        if backend is None:
            raise ValueError(f"no transport {name!r} (known: {', '.join(self._backends)})")
        return backend


def default_registry(*extra: Backend) -> Registry:
    """HTTP, UCX and local, plus any `extra` backends (tests add the in-process one)."""
    return Registry([HttpBackend(), UcxBackend(), LocalBackend(), *extra])


def parse_preference(text: str | None) -> tuple[str, ...]:
    """"ucx,tcp" -> ("ucx", "tcp"); unknown names are an error naming them."""
    if not text:
        return DEFAULT_PREFERENCE
    names = tuple(SCHEMES.get(n.strip().lower(), n.strip().lower()) for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ("tcp", "ucx")]
    if bad:
        raise ValueError(f"unknown transport(s) {', '.join(bad)}: use ucx and/or tcp")
    return names
