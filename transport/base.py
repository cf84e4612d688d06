"""The two transport seams: the channel a loader or node reads blocks through, and the node API servers call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from cachenode.blocks import Block, BlockRequest
from cachenode.routing import Channel
from cachenode.source import SourceRef

__all__ = ["Backend", "Channel", "ChannelOptions", "ClientChannel", "Connector", "NodeApi", "Server",
           "ServerOptions"]

# `Channel` (read a block into a caller's buffer) is declared in the core module that calls it,
# the owner-read routine, because core must not import transport; transports implement it.


class ClientChannel(Channel, Protocol):
    """A transport's client to one node: reads blocks and counts the time it spent on digests."""

    digest_seconds: float

    def close(self) -> None:
        """Drop the connections this channel keeps."""


class NodeApi(Protocol):
    """What every server calls, whatever the transport: the node service
    (cachenode.node.service.NodeService). One door: every request is authorized and served here."""

    def authorize(self, token: str | None) -> None: ...
    def failed(self, exc: Exception) -> tuple[int, dict]: ...
    def refused(self, kind: str) -> None: ...
    def connection_shed(self) -> None: ...
    def client_gone(self) -> None: ...
    async def serve(self, req: BlockRequest, *, verify: bool = False, forwarded: str | None = None,
                    avoid: frozenset[str] = frozenset(), transport: str = "http") -> Block: ...
    def background_pace(self) -> float | None: ...
    async def serve_background(self, req: BlockRequest, *, begin: Callable[[Block, int], Awaitable[None]],
                               write: Callable[[memoryview], Awaitable[None]], verify: bool = False,
                               forwarded: str | None = None, avoid: frozenset[str] = frozenset(),
                               transport: str = "http") -> None: ...
    async def stat(self, ref: SourceRef) -> dict: ...
    async def list(self, ref: SourceRef) -> dict: ...
    def members(self) -> dict: ...
    def health(self) -> dict: ...
    def metrics_text(self) -> bytes: ...
    async def fill(self, payload) -> dict: ...
    async def warm(self, body) -> dict: ...


@dataclass(frozen=True)
class ChannelOptions:
    """How an owner (a loader, or a node forwarding) talks to nodes, whatever the transport."""

    token: str | None = None
    timeout: float = 10.0          # a stalled transfer fails after this (s); see wire.BACKGROUND_PATIENCE
    window: int = 8                # block requests in flight per node (UCX bounds them)
    connections_per_node: int = 32  # HTTP keep-alive pool per node


@dataclass(frozen=True)
class ServerOptions:
    """Where and how a node listens (only HTTP has a port; UCX listens on its worker address)."""

    host: str = "127.0.0.1"
    port: int = 0
    max_connections: int = 512
    idle_timeout: float = 30.0
    local_socket: str | None = None  # the local transport's unix socket path


class Connector(Protocol):
    """One owner's channels of one transport: the state they share (an HTTP session, a UCX
    context) and one channel per node, closed together."""

    def channel(self, url: str, address: str | None = None) -> ClientChannel:
        """The channel to the node at `url` (`address`: what it advertised for this transport)."""

    def digest_seconds(self) -> float:
        """Time all its channels spent checking digests."""

    async def close(self) -> None: ...


class Server(Protocol):
    """One transport's listener in front of a NodeApi."""

    async def start(self) -> str:
        """Listen; the address members advertise for this transport (a URL for HTTP)."""

    async def close(self) -> None: ...


class Backend(Protocol):
    """A transport as the registry holds it."""

    name: str

    def available(self) -> bool:
        """Whether this process can speak it (an optional package may be missing)."""

    def connector(self, options: ChannelOptions) -> Connector: ...

    def server(self, service: NodeApi, options: ServerOptions) -> Server: ...
