"""The two transport seams: the channel a loader or node reads blocks through, and the node API servers call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol, runtime_checkable

from cachenode.blocks import Block, BlockRequest
from cachenode.routing import Channel
from cachenode.source import SourceRef

from .object_wire import ObjectCall

__all__ = ["Backend", "BlockMapper", "Channel", "ChannelOptions", "ClientChannel", "Connector", "NodeApi", "ObjectChannel",
           "Server", "ServerOptions"]

# `Channel` (read a block into a caller's buffer) is declared in the core module that calls it,
# the owner-read routine, because core must not import transport; transports implement it.


class ClientChannel(Channel, Protocol):
    """A transport's client to one node: reads blocks and counts the time it spent on digests."""

    digest_seconds: float

    def close(self) -> None:
        """Drop the connections this channel keeps."""


@runtime_checkable
class BlockMapper(Protocol):
    """A channel that can also give a whole block as a read-only mapping (this host's node's
    memfd): readers that keep whole blocks skip the copy into a buffer of their own."""

    async def map_block(self, req: BlockRequest, length: int) -> memoryview:
        """The block's bytes, mapped read-only."""


class ObjectChannel(Protocol):
    """A transport's object calls to one node (HTTP, UCX and in-process channels offer them).
    Digests are checked end to end: a put carries the caller's, a get checks the node's."""

    async def put_objects(self, namespace: str, keys: list[str], views: list[memoryview], digests: list[str], *,
                          writer: str | None, background: bool = False) -> dict[str, str]:
        """Send the objects from the caller's buffers; per key "stored" or "exists"."""

    async def get_objects(self, namespace: str, keys: list[str], into: list[memoryview | None],
                          timeout: float | None = None) -> list[memoryview | None]:
        """Each key's bytes in `into[i]` (a view of the filled length) or a fresh buffer; None: a miss."""

    async def exists_objects(self, namespace: str, keys: list[str]) -> list[bool]: ...

    async def delete_objects(self, namespace: str, keys: list[str], *, writer: str | None) -> int: ...


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
    # Objects without origin (transport/object_wire.py decodes the call; see NodeService).
    async def put_objects(self, call: ObjectCall, writer: str | None,
                          receive: Callable[[int], Awaitable[bytearray]]) -> dict[str, str]: ...
    async def get_objects(self, call: ObjectCall) -> list[tuple[bytes | bytearray, str] | None]: ...
    def exists_objects(self, call: ObjectCall) -> list[bool]: ...
    def delete_objects(self, call: ObjectCall, writer: str | None) -> int: ...


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
