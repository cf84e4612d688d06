"""The node service, the one door: every block, stat, list, fill and warm request, whatever the transport.

It owns validation, the allow-list, owner routing and forwarding, single-flight (through the
cache), QoS accounting and served-bytes metrics; the HTTP and UCX servers only decode a request,
call it and write bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..blocks import Block, BlockRequest, digest
from ..errors import BadRequest, BlockCorrupt, Forbidden, PeerUnavailable, Unauthorized
from ..objects import STORED, object_key
from ..pauses import Pauses
from ..placement import rank
from ..routing import read_from_owners
from ..source import SourceRef
from ..store import shm
from ..store.host_copies import HostCopies
from ..transport import wire
from ..transport.http_client import HttpConnector, HttpNodeClient
from ..transport.object_wire import WRITER_HEADER, ObjectCall
from ..warming import select_objects, warm_objects
from .budgets import Budgets
from .cache import BlockCache
from .config import NodeConfig
from .membership import Membership
from .metrics import NodeMetrics
from .objects import ObjectStore
from .qos import Governor
from .singleflight import SingleFlight

log = logging.getLogger("cachenode.service")


@dataclass(eq=False, repr=False, kw_only=True)
class NodeService:
    """Decides who answers a block request: the owner by rendezvous rank, else the fallbacks.

    Only the owner (or, while it is down, the next in rank) fills from the origin, so a block is
    read from blob storage once per cluster. A forwarded request (proved to come from a node) is
    always served locally.
    """

    # Its parts, from the composition root (compose.build_node), which also starts and closes
    # them: the service builds nothing and owns no lifetime.
    config: NodeConfig
    cache: BlockCache
    budgets: Budgets
    governor: Governor
    metrics: NodeMetrics
    membership: Membership
    peers: HttpConnector  # channels to other nodes (forwards, warm fills), made by the registry
    objects: ObjectStore  # objects without origin: tiers and budgets apart from the blocks'
    host_copies: HostCopies  # blocks handed to this host's loaders by descriptor (local transport)
    # Owners that failed a forward sit out a pause: the loaders' rule (cachenode.pauses).
    pauses: Pauses = field(default_factory=Pauses)

    def __post_init__(self) -> None:
        self._token = self.config.token or ""
        self._forward_secret = self.config.forward_secret()
        self._peer_timeout = self.config.peer_timeout
        self._namespaces = frozenset(self.config.namespaces)
        self._writers = self.config.writers()
        # One pull per block for this host's loaders (host_copy), apart from the cache's fills.
        self._host_flights: SingleFlight[tuple[bytes | bytearray, int, str]] = SingleFlight()

    def peer(self, url: str) -> HttpNodeClient:
        """The channel to another node (forwards, warm fills), made through the transport registry."""
        return self.peers.channel(url)

    # -- checks every request passes -------------------------------------------------------

    def authorize(self, token: str | None) -> None:
        """The cluster token a request presented (None: none at all)."""
        if not self._token:
            return
        if not token:
            raise Unauthorized("missing cluster token (Authorization: Bearer <token>)")
        try:
            sent = token.encode()
        except UnicodeEncodeError:  # header bytes that are not UTF-8 arrive as surrogates
            raise Unauthorized("the Authorization header is not valid UTF-8") from None
        if not hmac.compare_digest(sent, self._token.encode()):
            raise Forbidden("wrong cluster token")

    def from_node(self, marker: str | None) -> bool:
        """True if `marker` (the forwarded field of a request) proves a node sent it; a made-up
        one is refused, so a loader cannot make a non-owner fill (and fill twice per cluster)."""
        if marker is None:
            return False
        # Without a cluster token (loopback only) there is no secret and no boundary to keep.
        if self._forward_secret and not hmac.compare_digest(marker.encode(), self._forward_secret.encode()):
            raise Forbidden("the forwarded marker is for node-to-node requests: wrong node credential")
        return True

    def client_gone(self) -> None:
        """A client hung up mid-response: counted, not an error."""
        self.metrics.client_disconnects.inc()

    def refused(self, kind: str) -> None:
        """A request the transport itself refused (e.g. an unknown path), counted by kind."""
        self.metrics.errors.labels(kind).inc()

    def connection_shed(self) -> None:
        """A silent connection closed at the connection cap for a new one (counted)."""
        self.metrics.connections_shed.inc()

    def failed(self, exc: Exception) -> tuple[int, dict]:
        """(status, error body) for a failed request, counted by kind."""
        status, body = wire.error_body(exc)
        self.metrics.errors.labels(body["error"]).inc()
        if status >= 500:
            log.warning("request failed: %s", exc)
        return status, body

    # -- blocks ---------------------------------------------------------------------------

    async def serve(self, req: BlockRequest, *, verify: bool = False, forwarded: str | None = None,
                    avoid: frozenset[str] = frozenset(), transport: str = "http",
                    background: bool = False) -> Block:
        """The block for `req`. A foreground block is accounted here and the caller sends it
        right away; a background one is `serve_background`'s to send, in paced pieces. The
        caller closes the block once sent (a disk block holds its file open until then)."""
        m = self.metrics
        if transport == "ucx":
            m.ucx_requests.inc()
        block = await self._get_block(req, verify=verify, forwarded=forwarded, avoid=avoid,
                                      background=background)
        if not background:
            try:
                await self.governor.foreground(block.length)
            except BaseException:
                block.close()  # never handed over: its file is ours to close
                raise
            self.governor.own(block.length, "tx")
        m.served_bytes.inc(block.length)
        m.served_blocks.labels(block.tier).inc()
        return block

    async def host_copy(self, req: BlockRequest, *, verify: bool = False) -> tuple[int, int, str]:
        """(fd, length, digest) of a sealed memfd holding exactly `req`'s block, for a loader on
        this host (the local transport; its token is checked by `authorize` first). The
        allow-list and block size are checked before the copies are looked at. The fd is the
        caller's own descriptor (a dup), to close once sent: the copies may drop theirs
        meanwhile, and a closed number could be reused by another block's copy.

        Blocks in memfds (store/shm.py, with --local-socket) are handed over as they are: a
        tier's own bytes, with nothing kept beside them. Others (forwarded blocks, which no tier
        here keeps; disk blocks) are kept as this host's copy, one per block while it stays in
        the memory budget, so the host's loaders share one pull of it (a non-owner forwards
        once, then serves its copy); a forwarded block in a memfd is kept uncopied."""
        self.admit(req)
        if verify:
            # The loader found the copy it got corrupt: a pull of its own, from tiers that check
            # theirs, replacing the kept copy. Never joins a flight that may hand out the bad one.
            data, length, dg, own = await self._pull_and_keep(req, verify=True)
        else:
            found = self._hand_kept(req.key)
            if found is not None:
                return found
            # Single-flight per block: the ranks of a host ask for the same block at the same
            # moment, and each would pull it (a forward from its owner crosses the host's link
            # once per rank) and make a copy of its own. No await since the look-up above, so
            # a flight that kept the copy has not ended unseen in between.
            (data, length, dg, own), shared = await self._host_flights.do(req.key, lambda: self._pull_and_keep(req))
            if shared:
                self.metrics.served_bytes.inc(length)
                self.metrics.served_blocks.labels("host").inc()
        fd = shm.handle(data) if own else None
        if fd is not None:
            return fd, length, dg  # the tier's own memfd: every waiter gets a descriptor of it
        found = self.host_copies.get(req.key)
        if found is not None:
            return os.dup(found[0]), found[1], found[2]  # no await since get: the fd is still the copy's
        # Not kept (no room in the memory budget), or already shed to make room: the pulled
        # bytes' own memfd, or a copy for this request alone (never a second pull).
        fd = shm.handle(data)
        return (fd if fd is not None else await asyncio.to_thread(self.host_copies.make, data)), length, dg

    def _hand_kept(self, key: str) -> tuple[int, int, str] | None:
        """The kept copy of `key` for one more loader (a dup of its fd), counted; None if none."""
        found = self.host_copies.get(key)
        if found is None:
            return None
        self.metrics.served_bytes.inc(found[1])
        self.metrics.served_blocks.labels("host").inc()
        return os.dup(found[0]), found[1], found[2]

    async def _pull_and_keep(self, req: BlockRequest, *, verify: bool = False):
        """(bytes, length, digest, own) of the block from the tiers or its owner (one `serve`).
        `own`: the bytes are a tier's own memfd, handed over as they are; otherwise they are
        kept as this host's copy if the memory budget has room."""
        block = await self.serve(req, verify=verify, transport="local")
        try:
            data = block.data if block.data is not None else await asyncio.to_thread(block.read_file)
        finally:
            block.close()
        if block.tier != "peer" and shm.mapped(data):
            return data, block.length, block.digest, True
        fd = shm.handle(data)  # a forward into a memfd: kept as it is
        if fd is None:
            # Off the loop: writing 8 MiB into fresh shared memory is a few ms of page faults.
            fd = await asyncio.to_thread(self.host_copies.make, data)
        if not self.host_copies.keep(req.key, fd, block.length, block.digest):
            os.close(fd)  # no room: each waiter is handed `data` by itself
        return data, block.length, block.digest, False

    def admit(self, req: BlockRequest) -> None:
        """The checks every block request passes before a tier or an owner is asked:
        the allow-list, then the node's block size."""
        self.cache.origin_for(req.ref)  # allow-list first: never forward what we would refuse
        self._check_block_size(req)

    def background_pace(self) -> float | None:
        """Wire bytes/s a transport that can pace a send (TCP) gives one background piece;
        None when nothing paces background traffic."""
        return self.governor.send_pace()

    async def serve_background(self, req: BlockRequest, *, begin: Callable[[Block, int], Awaitable[None]],
                               write: Callable[[memoryview], Awaitable[None]], verify: bool = False,
                               forwarded: str | None = None, avoid: frozenset[str] = frozenset(),
                               transport: str = "http") -> None:
        """A background block (a prefetch), the same for every transport.

        Admitted a few at a time (their buffers are bounded), fetched, and its bytes in memory
        before `begin(block, piece size)` lets the transport answer: a failure up to there is an
        ordinary error reply. Then `write(view)` sends it in pieces paced into the idle capacity
        of the link's tx side, each within the deadline (a client that takes nothing for that
        long must not hold a piece slot, which all background sends share): TimeoutError, and
        the transport drops the connection.
        """
        async with self.budgets.background_sends():
            block = await self.serve(req, verify=verify, forwarded=forwarded, avoid=avoid,
                                     transport=transport, background=True)
            try:
                data = block.data if block.data is not None else await asyncio.to_thread(block.read_file)
            finally:
                block.close()
            piece = self.governor.send_piece(block.length)
            await begin(block, piece)
            await self.governor.send(data, write, piece, deadline=self._peer_timeout * wire.BACKGROUND_PATIENCE)

    async def _get_block(self, req: BlockRequest, *, verify: bool = False, forwarded: str | None = None,
                         avoid: frozenset[str] = frozenset(), background: bool = False) -> Block:
        self.admit(req)
        # A background read that misses fills as warming does: paced on rx, and lifted at once
        # if a loader starts waiting for the same block.
        if self.from_node(forwarded):
            return await self.cache.get_block(req, verify=verify, background=background)
        if avoid:
            avoid = await self.membership.confirm_down(avoid)
        _, length = req.span
        block = await self._from_owners(req, length, avoid, background)
        return block if block is not None else await self.cache.get_block(req, verify=verify, background=background)

    async def _from_owners(self, req: BlockRequest, length: int, avoid: frozenset[str],
                           background: bool = False) -> Block | None:
        """The block from its owner (or the next in rank above us), None if we rank first.
        A background request stays background on the way: the owner paces it too."""
        ranked = rank(req.key, [m for m in self.membership.healthy_ids() if m not in avoid])
        me = self.membership.self_id
        owners = ranked[:ranked.index(me)] if me in ranked else ranked
        if not owners:
            return None

        def on_down(member_id: str, exc: Exception) -> None:
            # Paused (the loaders' rule, in read_from_owners), not marked down: the health
            # checks decide membership; one failed forward must not drop an owner for long.
            self.metrics.errors.labels("peer").inc()

        # The forwarded block's buffer counts like a fill's; released before any local fill,
        # which takes a slot of its own.
        async with self.budgets.fill_slots(background):
            buf = self.cache.buffers(length)
            got = await read_from_owners(req, memoryview(buf), owners, self._channel, self.pauses,
                                         avoid=avoid, forwarded=self._forward_secret or "1",
                                         background=background, on_down=on_down)
        if got is None:
            return None
        self.metrics.forwarded.inc()
        return Block(length, got[1], "peer", data=buf)  # not kept here: no replication

    def _check_block_size(self, req: BlockRequest) -> None:
        """The block size is the node's: a client cannot make a node allocate or key blocks of
        another size (memory budgets are in blocks of this size)."""
        if req.block_size != self.config.block_size:
            raise BadRequest(f"bs={req.block_size}: this cluster's block size is {self.config.block_size}")

    def _channel(self, member_id: str):
        member = self.membership.get(member_id)
        if member is None:
            raise PeerUnavailable(f"member {member_id} left the cluster")
        return self.peer(member.url)

    # -- metadata, warming ------------------------------------------------------------------

    async def stat(self, ref: SourceRef) -> dict:
        return wire.stat_to_wire(ref, await self.cache.stat(ref), self.config.block_size)

    async def list(self, ref: SourceRef) -> dict:
        return wire.listing_to_wire(await self.cache.list(ref, ref.path), self.config.block_size)

    def members(self) -> dict:
        return wire.members_to_wire(self.membership.self_id, self.membership.members())

    def health(self) -> dict:
        me = self.membership.self_member
        # The id lets DNS-discovered peers know a node by --member-id, not by its current address.
        return {"ok": True, "id": me.id if me else None, "transports": me.transports if me else {}}

    def metrics_text(self) -> bytes:
        self.cache.refresh_metrics()
        self._object_gauges()
        return self.metrics.render()

    async def fill(self, payload) -> dict:
        """Warm: fill blocks `indices` of one object here, a few at a time; count those cached."""
        base, indices = wire.parse_fill(payload)
        self._check_block_size(base)
        sem = asyncio.Semaphore(self.config.warm_concurrency)

        async def one(i: int) -> bool:
            async with sem:
                return await self.cache.warm_block(BlockRequest(base.ref, base.etag, base.size, base.block_size, i))

        cached = await asyncio.gather(*(one(i) for i in indices))
        return {"blocks": len(indices), "cached": sum(cached)}

    async def warm(self, body) -> dict:
        """Warm everything under a prefix across the cluster, coordinated by this node."""
        if not isinstance(body, dict):
            raise BadRequest("warm request must be a JSON object naming a source")
        ref = SourceRef.from_params(body, prefix=True)
        objects = select_objects(await self.cache.list(ref, ref.path), ref.path)
        me = self.membership.self_id

        async def send_fill(member, payload):
            if member.id == me:
                return await self.fill(payload)
            return await self.peer(member.url).fill(payload)

        summary = await warm_objects(objects, self.config.block_size, self.membership.members(), send_fill)
        return summary.to_json()


    # -- objects without origin --------------------------------------------------------------
    # The loader sends each key to its owner by rendezvous rank over the object key; a node
    # answers for what it holds and stores what it is sent, without forwarding: a key that
    # reached a non-owner (the loader saw other members) is at worst a miss later, and since a
    # key's bytes are fixed by its first writer, never a wrong object.

    def _namespace(self, call: ObjectCall) -> str:
        if call.namespace not in self._namespaces:
            self.metrics.object_requests.labels("(refused)", call.op, "unknown_namespace").inc()
            raise Forbidden(f"namespace {call.namespace!r} is not served by this node (--namespace)")
        return call.namespace

    def _authorize_writer(self, ns: str, writer: str | None) -> None:
        """Puts and deletes need the namespace's writer credential: objects are immutable and
        the first writer wins, so a holder of the cluster token alone could make a poisoned
        object permanent."""
        expected = self._writers.get(ns)
        if not writer:
            raise Forbidden(f"writing namespace {ns!r} needs its writer credential ({WRITER_HEADER})")
        if expected is None or not hmac.compare_digest(writer.encode("utf-8", "surrogateescape"), expected.encode()):
            raise Forbidden(f"wrong writer credential for namespace {ns!r}")

    async def put_objects(self, call: ObjectCall, writer: str | None,
                          receive: Callable[[int], Awaitable[bytearray]]) -> dict[str, str]:
        """A batch put. Checked before a byte of objects is read (namespace, writer, sizes);
        then `receive(n)` (the transport) reads each object into a buffer of its own, paced as
        background traffic on rx if nobody waits for it, and its digest is checked. Nothing is
        stored until the whole batch arrived intact: a put cut off mid-body leaves nothing.
        Per key: "stored", or "exists" (the first writer's object stays)."""
        ns = self._namespace(call)
        self._authorize_writer(ns, writer)
        limit = self.config.max_object_size
        for key, size in zip(call.keys, call.sizes):
            if size > limit:
                self.metrics.object_requests.labels(ns, "put", "too_large").inc()
                raise BadRequest(f"object {key[:80]!r} of {size} bytes exceeds this node's --max-object-size "
                                 f"{limit}")
        received: list[bytearray] = []
        async with self.budgets.object_puts(sum(call.sizes)):
            for key, size, expected in zip(call.keys, call.sizes, call.digests):
                if call.background:
                    await self.governor.background(size, direction="rx")
                else:
                    await self.governor.foreground(size)
                data = await receive(size)
                self.governor.own(size, "rx")
                if digest(data) != expected:
                    self.metrics.object_requests.labels(ns, "put", "corrupt").inc()
                    raise BlockCorrupt(f"object {key[:80]!r} failed its digest check on arrival: nothing of "
                                       f"this batch was stored")
                received.append(data)
        # No await from here to the end: the batch lands at once, first writer wins per key.
        out = {}
        for key, data, dg in zip(call.keys, received, call.digests):
            out[key] = self.objects.put(object_key(ns, key), data, dg)
            self.metrics.object_requests.labels(ns, "put", out[key]).inc()
            if out[key] == STORED:
                self.metrics.object_bytes.labels(ns, "in").inc(len(data))
        self._object_gauges()
        return out

    async def get_objects(self, call: ObjectCall) -> list[tuple[bytes | bytearray, str] | None]:
        """Per key (bytes, digest) or None (a miss). The bytes are the store's own, never
        mutated: the transport sends them as they are and the client checks the digest."""
        ns = self._namespace(call)
        found = [await self.objects.get(object_key(ns, key)) for key in call.keys]
        n = 0
        for item in found:
            self.metrics.object_requests.labels(ns, "get", "hit" if item else "miss").inc()
            n += len(item[0]) if item else 0
        await self.governor.foreground(n)
        self.governor.own(n, "tx")
        self.metrics.object_bytes.labels(ns, "out").inc(n)
        return found

    def exists_objects(self, call: ObjectCall) -> list[bool]:
        ns = self._namespace(call)
        out = [self.objects.has(object_key(ns, key)) for key in call.keys]
        for hit in out:
            self.metrics.object_requests.labels(ns, "exists", "hit" if hit else "miss").inc()
        return out

    def delete_objects(self, call: ObjectCall, writer: str | None) -> int:
        """Remove the keys (a writer's call); how many were here."""
        ns = self._namespace(call)
        self._authorize_writer(ns, writer)
        gone = sum(self.objects.delete(object_key(ns, key)) for key in call.keys)
        self.metrics.object_requests.labels(ns, "delete", "ok").inc(len(call.keys))
        self._object_gauges()
        return gone

    def _object_gauges(self) -> None:
        m, o = self.metrics, self.objects
        m.object_memory_used.set(o.memory.used)
        m.object_disk_used.set(o.disk.used if o.disk is not None else 0)
