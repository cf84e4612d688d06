"""The in-process transport: a channel that calls a node's API object directly, in the same event loop.

For deterministic tests: no sockets, yet every call goes through the node's one door as a wire
call does (the same decoder, authorization, serve, and error table), so a fault is injected by
subclassing a real class (the node service, the block cache, an origin) and shows up at the
loader exactly as it would over HTTP or UCX.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Iterable

from cachenode.blocks import Block, BlockRequest, digest, digest_off_loop
from cachenode.errors import BlockCorrupt, PeerUnavailable

from . import object_wire as ow
from . import wire
from .base import ChannelOptions, NodeApi, ServerOptions
from .channel_table import ChannelTable

INPROC = "inproc"


class InprocBackend:
    """The registry entry: which node APIs are "listening", by the address they advertise.
    One per registry, so nodes and loaders that share a registry (one test) find each other."""

    name = INPROC

    def __init__(self) -> None:
        self._listening: dict[str, NodeApi] = {}
        self._ids = itertools.count(1)

    def available(self) -> bool:
        return True

    def connector(self, options: ChannelOptions) -> "InprocConnector":
        return InprocConnector(self, options)

    def server(self, service: NodeApi, options: ServerOptions) -> "InprocServer":
        return InprocServer(self, service)

    def listen(self, service: NodeApi) -> str:
        address = f"{INPROC}-{next(self._ids)}"
        self._listening[address] = service
        return address

    def unlisten(self, address: str) -> None:
        self._listening.pop(address, None)

    def lookup(self, address: str) -> NodeApi | None:
        return self._listening.get(address)


class InprocServer:
    """A node API made reachable under an address until closed (then its channels fail as a
    stopped node's do: PeerUnavailable, nothing transferred)."""

    def __init__(self, backend: InprocBackend, service: NodeApi) -> None:
        self._backend = backend
        self._service = service
        self.address = ""

    async def start(self) -> str:
        self.address = self._backend.listen(self._service)
        return self.address

    async def close(self) -> None:
        self._backend.unlisten(self.address)


class _WrongLength(Exception):
    """The node's block is not the length the caller's buffer says: a corrupt answer."""


class InprocChannel:
    """Reads blocks from one in-process node. Same read_block contract as HttpNodeClient."""

    def __init__(self, backend: InprocBackend, url: str, address: str, options: ChannelOptions) -> None:
        self.base_url = url
        self._backend = backend
        self._address = address
        self._token = options.token
        self.digest_seconds = 0.0

    def __repr__(self) -> str:
        return f"InprocChannel({self.base_url})"

    async def read_block(self, req: BlockRequest, dest: memoryview, *, verify: bool = False,
                         forwarded: str | None = None, avoid: Iterable[str] = (),
                         background: bool = False) -> tuple[str, str]:
        service = self._backend.lookup(self._address)
        if service is None:
            raise PeerUnavailable(f"cache node {self.base_url} (inproc) not reachable: not listening")
        answer: list[str] = []  # tier, digest: known once the node begins its answer
        pos = 0

        async def begin(block: Block, piece: int) -> None:
            if block.length != len(dest):
                raise _WrongLength(block.length)
            answer[:] = [block.tier, block.digest]

        async def write(view: memoryview) -> None:
            nonlocal pos
            dest[pos:pos + len(view)] = view
            pos += len(view)

        try:
            service.authorize(self._token)
            # Encoded and decoded as on the wire, so the node sees exactly what a server hands it.
            call = wire.decode_block_call(wire.request_params(req, verify, background), forwarded=forwarded,
                                          avoid=avoid)
            if call.background:
                await service.serve_background(call.req, begin=begin, write=write, transport=INPROC,
                                               **call.options)
            else:
                block = await service.serve(call.req, transport=INPROC, **call.options)
                try:
                    await begin(block, block.length)
                    # A disk block without its bytes in memory: read it off the loop, as UCX does.
                    dest[:] = block.data if block.data is not None else await asyncio.to_thread(block.read_file)
                finally:
                    block.close()  # sent: its file (if any) may go
        except _WrongLength as exc:
            raise BlockCorrupt(f"{self.base_url} (inproc) answered {exc.args[0]} bytes for the {len(dest)}-byte "
                               f"block {req.index} of {req.ref}") from None
        except Exception as exc:  # noqa: BLE001 - every failure maps as it does on the wire
            if answer:  # mid-body: a wire transport drops the connection here
                raise PeerUnavailable(f"cache node {self.base_url} (inproc) failed mid-transfer: {exc!r}") from exc
            _, body = service.failed(exc)
            raise wire.error_from_body(body, f"node {self.base_url}, inproc") from None
        t0 = time.perf_counter()
        got = await digest_off_loop(dest)
        self.digest_seconds += time.perf_counter() - t0
        tier, expected = answer
        if got != expected:
            raise BlockCorrupt(f"block {req.index} of {req.ref} from {self.base_url} (inproc) failed its digest check")
        return tier, expected

    # -- objects without origin: encoded and decoded as on the wire, errors mapped as there --

    async def _object(self, op: str, header: dict, act):
        service = self._backend.lookup(self._address)
        if service is None:
            raise PeerUnavailable(f"cache node {self.base_url} (inproc) not reachable: not listening")
        try:
            service.authorize(self._token)
            call = ow.decode_object_call(op, ow.parse_header(ow.frame(header)[ow.PREFIX_SIZE:]))
            return await act(service, call)
        except Exception as exc:  # noqa: BLE001 - every failure maps as it does on the wire
            _, body = service.failed(exc)
            raise wire.error_from_body(body, f"node {self.base_url}, inproc") from None

    async def put_objects(self, namespace: str, keys: list[str], views: list[memoryview], digests: list[str], *,
                          writer: str | None, background: bool = False) -> dict[str, str]:
        pending = iter(views)

        async def receive(n: int) -> bytearray:
            return bytearray(next(pending)[:n])  # the node's own copy, as a wire transport's is

        async def act(service, call):
            return await service.put_objects(call, writer, receive)

        header = ow.call_header(ow.PUT, namespace, keys, [len(v) for v in views], digests, background)
        return await self._object(ow.PUT, header, act)

    async def get_objects(self, namespace: str, keys: list[str], into: list[memoryview | None],
                          timeout: float | None = None) -> list[memoryview | None]:
        async def act(service, call):
            return await service.get_objects(call)

        found = await self._object(ow.GET, ow.call_header(ow.GET, namespace, keys), act)

        async def read_into(i: int, view: memoryview) -> None:
            view[:] = found[i][0]  # the node's bytes, copied as a wire transport's would be

        sizes = [None if f is None else (len(f[0]), f[1]) for f in found]
        return await ow.land(keys, sizes, into, read_into, f"{self.base_url} (inproc)")

    async def exists_objects(self, namespace: str, keys: list[str]) -> list[bool]:
        async def act(service, call):
            return service.exists_objects(call)

        return await self._object(ow.EXISTS, ow.call_header(ow.EXISTS, namespace, keys), act)

    async def delete_objects(self, namespace: str, keys: list[str], *, writer: str | None) -> int:
        async def act(service, call):
            return service.delete_objects(call, writer)

        return await self._object(ow.DELETE, ow.call_header(ow.DELETE, namespace, keys), act)

    def close(self) -> None:
        """Nothing to close: no connection."""


class InprocConnector:
    """One owner's in-process channels, one per node address."""

    def __init__(self, backend: InprocBackend, options: ChannelOptions) -> None:
        self._backend = backend
        self._options = options
        self._channels: ChannelTable[InprocChannel] = ChannelTable(INPROC)

    def channel(self, url: str, address: str | None = None) -> InprocChannel:
        return self._channels.get(url, address, lambda: InprocChannel(self._backend, url, address, self._options))

    def digest_seconds(self) -> float:
        return self._channels.digest_seconds()

    async def close(self) -> None:
        self._channels.close()
