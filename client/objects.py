"""Objects without origin, the loader's side: batch put/get/exists/delete of immutable (namespace, key) objects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Iterable, Mapping, Sequence, TypeVar

from cachenode.blocks import digest_off_loop
from cachenode.errors import BadRequest, CacheError, Forbidden, PeerUnavailable
from cachenode.objects import check_keys, check_namespace, object_key
from cachenode.placement import Member, rank
from cachenode.transport.base import ObjectChannel
from cachenode.transport.object_wire import MAX_BATCH_BYTES
from cachenode.transport.registry import Registry

from .cluster import Cluster
from .config import ClientConfig
from .iothread import LoopThread

log = logging.getLogger("cachenode.client")
T = TypeVar("T")
__all__ = ["AsyncObjectClient", "ObjectClient"]

Buffer = bytes | bytearray | memoryview


def _bytes_view(value: Buffer) -> memoryview:
    view = memoryview(value)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class AsyncObjectClient(contextlib.AbstractAsyncContextManager):
    """Immutable objects keyed by (namespace, key), each held by its owner by rendezvous rank.

    Batch calls: every key goes to its owner, one request per owner, all owners at once. A get
    is a miss (None) when the owner does not have the key, is dead, or does not answer within
    the peer timeout; it never raises for that. Writes (put, delete) need the namespace's
    writer credential (`writer_token`): the cluster token alone can only read.
    Bound to the event loop it is first used on.
    """

    def __init__(self, nodes: Iterable[str] | None = None, token: str | None = None, *, namespace: str,
                 writer_token: str | None = None, registry: Registry | None = None, **client_options) -> None:
        self.namespace = check_namespace(namespace)
        self.writer_token = writer_token
        self.config = ClientConfig.resolve(nodes, token, **client_options)
        self.cluster = Cluster(self.config, registry)

    # -- placement -----------------------------------------------------------------------

    async def _members(self) -> list[Member]:
        _, members = await self.cluster.require()
        return members

    def _ranked(self, members: list[Member], key: str) -> list[Member]:
        by_id = {m.id: m for m in members}
        return [by_id[i] for i in rank(object_key(self.namespace, key), [m.id for m in members if m.healthy])]

    def _by_owner(self, members: list[Member], keys: Sequence[str]) -> dict[str, tuple[Member, list[int]]]:
        """Owner id -> (owner, positions of its keys). Members paused after a failure are
        skipped for reads: their keys are misses until the pause ends (no replication)."""
        groups: dict[str, tuple[Member, list[int]]] = {}
        for i, key in enumerate(keys):
            ranked = self._ranked(members, key)
            if not ranked:
                continue
            owner = ranked[0]
            groups.setdefault(owner.id, (owner, []))[1].append(i)
        return groups

    def _channel(self, member: Member) -> ObjectChannel:
        """The member's channel by the loader's transport preference (UCX where both have it)."""
        return self.cluster.channel(member)  # type: ignore[return-value] - every block channel has object calls

    def _failed(self, member: Member, exc: Exception) -> None:
        log.warning("object call to %s failed: %s", member.id, exc)
        self.cluster.pauses.failed(member.id)
        self.cluster.forget_members()

    # -- calls ---------------------------------------------------------------------------

    async def put(self, items: Mapping[str, Buffer], *, background: bool = False) -> dict[str, str]:
        """Batch put of immutable objects; per key "stored" or "exists" (first writer wins).
        Needs writer_token. `background=True`: nobody waits for it (paced into idle bandwidth)."""
        keys = check_keys(list(items))
        if not keys:
            return {}
        if not self.writer_token:
            raise Forbidden(f"writing namespace {self.namespace!r} needs its writer credential (writer_token=)")
        views = [_bytes_view(items[k]) for k in keys]
        digests = await asyncio.gather(*(digest_off_loop(v) for v in views))
        members = await self._members()
        results: dict[str, str] = {}

        async def to_owner(positions: list[int]) -> None:
            # A batch per owner, split so no request exceeds the wire's bound.
            for chunk in _chunks(positions, [len(views[i]) for i in positions]):
                results.update(await self._put_ranked(members, [keys[i] for i in chunk], [views[i] for i in chunk],
                                                      [digests[i] for i in chunk], background))

        await asyncio.gather(*(to_owner(pos) for _, pos in self._by_owner(members, keys).values()))
        return {k: results[k] for k in keys}

    async def _put_ranked(self, members, keys, views, digests, background) -> dict[str, str]:
        """Put one owner's batch; if the owner is down, the next in rank takes it (it becomes the
        owner once the dead one leaves the member list; no replication)."""
        last: Exception | None = None
        for member in self._ranked(members, keys[0]):
            try:
                return await self._channel(member).put_objects(self.namespace, keys, views, digests,
                                                               writer=self.writer_token, background=background)
            except PeerUnavailable as exc:
                self._failed(member, exc)
                last = exc
        raise PeerUnavailable(f"no cache node could store {len(keys)} objects of namespace {self.namespace!r}: {last}")

    async def get(self, keys: Sequence[str], into: Sequence[memoryview] | None = None) -> list[memoryview | None]:
        """Batch get; None = miss (also when the owner is dead or silent past the peer timeout).
        With `into`, bytes land in those buffers and the views returned are of the filled length."""
        keys = check_keys(keys)
        if into is not None and len(into) != len(keys):
            raise BadRequest(f"get of {len(keys)} keys was given {len(into)} buffers")
        out: list[memoryview | None] = [None] * len(keys)
        if not keys:
            return out
        dests = [None if into is None else _bytes_view(into[i]) for i in range(len(keys))]
        # One deadline for the whole call (members, then every owner at once): a get never
        # blocks past the peer timeout; what has not arrived by then is a miss.
        try:
            await asyncio.wait_for(self._get_all(keys, dests, out), self.config.peer_timeout)
        except asyncio.TimeoutError:
            log.warning("object get: %d of %d keys not answered within %.1f s: misses",
                        sum(v is None for v in out), len(keys), self.config.peer_timeout)
        return out

    async def _get_all(self, keys: list[str], dests: list[memoryview | None], out: list) -> None:
        try:
            members = await self._members()
        except PeerUnavailable as exc:
            log.warning("object get: no cache node answered: %s", exc)
            return

        async def from_owner(member: Member, positions: list[int]) -> None:
            if not self.cluster.pauses.admit(member.id):
                return  # paused after a failure: a miss, not a wait
            try:
                got = await self._channel(member).get_objects(self.namespace, [keys[i] for i in positions],
                                                              [dests[i] for i in positions],
                                                              timeout=self.config.peer_timeout)
            except PeerUnavailable as exc:
                self._failed(member, exc)
                return
            except asyncio.CancelledError:
                self.cluster.pauses.failed(member.id)  # silent past the deadline: paused like a failure
                raise
            except CacheError:
                # It answered, with an error that is the answer: alive (as in routing's rule), and
                # a probe it was given must end here, or the member would never be asked again.
                self.cluster.pauses.succeeded(member.id)
                raise
            self.cluster.pauses.succeeded(member.id)
            for i, view in zip(positions, got):
                out[i] = view

        await asyncio.gather(*(from_owner(m, pos) for m, pos in self._by_owner(members, keys).values()))

    async def exists(self, keys: Sequence[str]) -> list[bool]:
        """Per key: does its owner hold it (False when the owner is down)."""
        keys = check_keys(keys)
        out = [False] * len(keys)
        if not keys:
            return out
        members = await self._members()

        async def from_owner(member: Member, positions: list[int]) -> None:
            try:
                got = await asyncio.wait_for(
                    self._channel(member).exists_objects(self.namespace, [keys[i] for i in positions]),
                    self.config.peer_timeout)
            except (PeerUnavailable, asyncio.TimeoutError) as exc:
                self._failed(member, exc)
                return
            for i, hit in zip(positions, got):
                out[i] = bool(hit)

        await asyncio.gather(*(from_owner(m, pos) for m, pos in self._by_owner(members, keys).values()))
        return out

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove the keys from their owners (needs writer_token). A dead owner's objects are gone anyway."""
        keys = check_keys(keys)
        if not keys:
            return
        if not self.writer_token:
            raise Forbidden(f"deleting from namespace {self.namespace!r} needs its writer credential (writer_token=)")
        members = await self._members()

        async def at_owner(member: Member, positions: list[int]) -> None:
            try:
                await self._channel(member).delete_objects(self.namespace, [keys[i] for i in positions],
                                                           writer=self.writer_token)
            except PeerUnavailable as exc:
                self._failed(member, exc)

        await asyncio.gather(*(at_owner(m, pos) for m, pos in self._by_owner(members, keys).values()))

    async def close(self) -> None:
        await self.cluster.close()

    async def __aexit__(self, *exc) -> None:  # (__aenter__ returns self: AbstractAsyncContextManager)
        await self.close()


class ObjectClient(contextlib.AbstractContextManager):
    """Sync face of AsyncObjectClient (the same methods), on a private I/O thread."""

    def __init__(self, nodes: Iterable[str] | None = None, token: str | None = None, *, namespace: str,
                 writer_token: str | None = None, **client_options) -> None:
        self._io = LoopThread("cachenode-objects")
        self.aclient = AsyncObjectClient(nodes, token, namespace=namespace, writer_token=writer_token,
                                         **client_options)

    def _run(self, coro: Awaitable[T]) -> T:
        return self._io.run(coro)

    def put(self, items: Mapping[str, Buffer], *, background: bool = False) -> dict[str, str]:
        return self._run(self.aclient.put(items, background=background))

    def get(self, keys: Sequence[str], into: Sequence[memoryview] | None = None) -> list[memoryview | None]:
        return self._run(self.aclient.get(keys, into))

    def exists(self, keys: Sequence[str]) -> list[bool]:
        return self._run(self.aclient.exists(keys))

    def delete(self, keys: Sequence[str]) -> None:
        return self._run(self.aclient.delete(keys))

    def close(self) -> None:
        if not self._io.loop.is_closed():
            self._run(self.aclient.close())
            self._io.close()

    def __exit__(self, *exc) -> None:  # (__enter__ returns self: AbstractContextManager)
        self.close()


def _chunks(positions: list[int], sizes: list[int]) -> list[list[int]]:
    """Positions split into runs of at most MAX_BATCH_BYTES (an object alone may be bigger: the
    node then names it as too large)."""
    out: list[list[int]] = [[]]
    total = 0
    for i, n in zip(positions, sizes):
        if out[-1] and total + n > MAX_BATCH_BYTES:
            out.append([])
            total = 0
        out[-1].append(i)
        total += n
    return out

