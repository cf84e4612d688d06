"""The loader side of the UCX transport: a block lands straight in the caller's memoryview."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from typing import Iterable

from cachenode.blocks import BlockRequest, digest, digest_off_loop
from cachenode.errors import BlockCorrupt, CacheError, PeerUnavailable

from . import object_wire as ow
from . import ucx_wire as w
from .base import ChannelOptions
from .channel_table import ChannelTable
from .ucx_engine import UcxEngine
from .wire import (
    BACKGROUND_PATIENCE, BLOCK_DIGEST, BLOCK_LENGTH, BLOCK_PIECE, BLOCK_TIER, MAX_PIECES, UCX_AVOID, UCX_POSTED,
    UCX_TOKEN, error_from_body, request_params,
)

log = logging.getLogger("cachenode.ucx")


class UcxContext:
    """One loader's UCX state: its own worker (progressed by the loop that made it), our
    worker address, endpoints to nodes, request ids."""

    def __init__(self) -> None:
        self.engine = UcxEngine()
        self.address = self.engine.address
        self.endpoints = w.Endpoints(self.engine)
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def check_loop(self) -> None:
        """The worker answers to the loop it was made in: another loop's read goes elsewhere."""
        if asyncio.get_running_loop() is not self.engine.loop:
            raise PeerUnavailable("this UCX channel belongs to another event loop")

    def cancel_inflight(self) -> None:
        """After a timeout: a receive posted into a caller's buffer must never complete later
        (the buffer is being refilled from another peer). Only this loader's worker is asked;
        see UcxEngine.cancel_inflight for what that can withdraw."""
        self.engine.cancel_inflight()

    def close(self) -> None:
        self.engine.close()


class UcxNodeClient:
    """Reads blocks from one node over UCX. Same read_block contract as HttpNodeClient."""

    def __init__(self, base_url: str, address_b64: str, token: str | None, ctx: UcxContext,
                 *, timeout: float = 10.0, max_outstanding: int = 8) -> None:
        self.base_url = base_url
        self._address = base64.b64decode(address_b64)
        self._token = token
        self._ctx = ctx
        self._timeout = timeout
        self._sem = asyncio.Semaphore(max_outstanding)
        self.digest_seconds = 0.0  # wall time of the digest checks (on a thread for big blocks)

    def __repr__(self) -> str:
        return f"UcxNodeClient({self.base_url})"

    async def _abandon(self, bodies: list[asyncio.Future]) -> None:
        """Stop a body receive we no longer wait for (timeout, or our caller was cancelled) and
        wait until UCX has let go of the caller's buffer.

        Cancelling the asyncio future does not withdraw the posted receive: UCX would still
        write the block into `dest` later, after the caller got its buffer back. ucxx can only
        cancel every in-flight request of the worker; other reads hit by that fail with
        PeerUnavailable and go to the next member, as after a timeout.
        """
        if not all(b.done() for b in bodies):
            self._ctx.cancel_inflight()
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*bodies, return_exceptions=True)),
                                   self._timeout)
        except BaseException:  # noqa: BLE001 - cancelled, failed or timed out: we only wait here
            pass

    async def _settle(self, body: asyncio.Future) -> None:
        """Wait for a posted body receive that the node completes with whatever it sends after
        its header (an empty message after an error); withdraw it only if nothing comes."""
        try:
            await asyncio.wait_for(asyncio.shield(body), self._timeout)
        except Exception:  # noqa: BLE001 - a truncated or failed receive is over too; a stall is not
            if not body.done():
                await self._abandon([body])

    async def _receive(self, dest: memoryview, rid: int, info: dict) -> None:
        """The body into `dest`: one message, or (a paced background block) one per piece,
        each within a timeout of its own (patient: they come at the link's idle pace)."""
        piece = info.get(BLOCK_PIECE) or len(dest)
        if type(piece) is not int or piece <= 0 or -(-len(dest) // piece) > MAX_PIECES:
            raise BlockCorrupt(f"{self.base_url} announced pieces of {piece!r} bytes for a {len(dest)}-byte block")
        timeout = self._timeout * (BACKGROUND_PATIENCE if BLOCK_PIECE in info else 1)
        engine = self._ctx.engine
        bodies = [asyncio.ensure_future(engine.recv(dest[pos:pos + piece], w.body_tag(rid, k)))
                  for k, pos in enumerate(range(0, len(dest), piece))]
        try:
            for body in bodies:
                await asyncio.wait_for(asyncio.shield(body), timeout)
        except BaseException:
            await self._abandon(bodies)
            raise

    async def read_block(self, req: BlockRequest, dest: memoryview, *, verify: bool = False,
                         forwarded: str | None = None, avoid: Iterable[str] = (),
                         background: bool = False) -> tuple[str, str]:
        fields = request_params(req, verify, background)
        fields.update({UCX_TOKEN: self._token or "", UCX_AVOID: list(avoid)})
        # A foreground body comes in one message: its receive is posted with the header's,
        # before the request goes out, so the node's body finds it waiting (no round trip
        # through this loop between header and body). The node then answers every outcome
        # with a body message (an empty one after an error), which lets go of `dest`.
        posted = not background and len(dest) > 0
        if posted:
            fields[UCX_POSTED] = 1
        self._ctx.check_loop()
        engine = self._ctx.engine
        async with self._sem:
            rid = self._ctx.next_id()
            header = bytearray(w.HEADER_SIZE)
            body = None
            try:
                ep = await self._ctx.endpoints.get(self._address)
                got_header = asyncio.ensure_future(engine.recv(header, w.header_tag(rid)))
                if posted:
                    body = asyncio.ensure_future(engine.recv(dest, w.body_tag(rid)))
                await asyncio.wait_for(ep.send(w.pack_request(rid, self._ctx.address, fields),
                                               w.REQUEST_TAG), self._timeout)
                # a background block may wait for its owner's paced transfer before its header
                await asyncio.wait_for(got_header, self._timeout * (BACKGROUND_PATIENCE if background else 1))
                status, info = w.unpack_header(header)
                if status != 200 or info.get(BLOCK_LENGTH) != len(dest):
                    if body is not None:
                        await self._settle(body)  # the node follows with a body (empty after an error)
                    if status != 200:
                        raise error_from_body(info, f"node {self.base_url}, ucx")
                    raise BlockCorrupt(f"{self.base_url} announced {info.get(BLOCK_LENGTH)} bytes for a "
                                       f"{len(dest)}-byte block {req.index} of {req.ref}")
                if body is not None:
                    await asyncio.wait_for(asyncio.shield(body), self._timeout)
                elif len(dest):
                    await self._receive(dest, rid, info)
            except CacheError:
                raise
            except BaseException as exc:
                if body is not None:
                    # The body receive writes into the caller's buffer: it must be over
                    # (arrived, or withdrawn) before the caller gets `dest` back.
                    await self._abandon([body])
                if not isinstance(exc, Exception):  # cancelled
                    raise
                if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                    self._ctx.cancel_inflight()  # the header receive, if that is what stalled
                    self._ctx.endpoints.forget(self._address)
                    raise PeerUnavailable(f"cache node {self.base_url} (ucx) stalled on block {req.index}") from exc
                self._ctx.endpoints.forget(self._address)  # UCX errors become ours at the edge
                raise PeerUnavailable(f"cache node {self.base_url} (ucx) failed: {exc!r}") from exc
        t0 = time.perf_counter()
        got_digest = await digest_off_loop(dest)
        self.digest_seconds += time.perf_counter() - t0
        if got_digest != info[BLOCK_DIGEST]:
            raise BlockCorrupt(f"block {req.index} of {req.ref} from {self.base_url} (ucx) failed its digest check")
        return info.get(BLOCK_TIER, ""), info[BLOCK_DIGEST]

    # -- objects without origin: a put sends from the caller's buffers, a get lands in them ----

    async def _object_call(self, op: str, header: dict, writer: str | None = None,
                           uploads: list[memoryview] = (), land=None, timeout: float | None = None):
        """One object call: the request, then the call's header and a put's objects as messages
        tagged with a random upload id (sent from the caller's buffers as they are); returns the
        answer's JSON. `land(answer, rid)`: a get's receives, posted straight into the caller's
        buffers once the answer says how many bytes each object has."""
        timeout = timeout or self._timeout
        head = json.dumps(header, separators=(",", ":")).encode()
        upload = w.new_upload_id()
        fields = {ow.UCX_OP: op, UCX_TOKEN: self._token or "", ow.UCX_WRITER: writer or "", ow.UCX_UPLOAD: upload}
        if len(head) <= ow.UCX_INLINE_LIMIT:
            fields[ow.UCX_INLINE] = header
        else:
            fields[ow.UCX_HEADER_LENGTH] = len(head)
        self._ctx.check_loop()
        engine = self._ctx.engine
        async with self._sem:
            rid = self._ctx.next_id()
            reply = bytearray(w.HEADER_SIZE)
            sends: list[asyncio.Future] = []
            try:
                ep = await self._ctx.endpoints.get(self._address)
                got_reply = asyncio.ensure_future(engine.recv(reply, w.header_tag(rid)))
                await asyncio.wait_for(ep.send(w.pack_request(rid, self._ctx.address, fields), w.REQUEST_TAG), timeout)
                sends = ([] if ow.UCX_INLINE in fields
                         else [asyncio.ensure_future(ep.send(head, w.upload_tag(upload, 0)))])
                sends += [asyncio.ensure_future(ep.send(v, w.upload_tag(upload, i)))
                          for i, v in enumerate(uploads, 1) if len(v)]
                await asyncio.wait_for(got_reply, timeout)
                status, info = w.unpack_header(reply)
                if status != 200:
                    # Refused before the node took our uploads: withdraw those still posted.
                    await self._abandon(sends)
                    raise error_from_body(info, f"node {self.base_url}, ucx")
                await asyncio.wait_for(asyncio.gather(*sends), timeout)
                answer = info.get(ow.UCX_INLINE)
                if answer is None:  # too big for the reply header: it follows as body piece 0
                    raw = bytearray(int(info[ow.UCX_HEADER_LENGTH]))
                    await asyncio.wait_for(engine.recv(raw, w.body_tag(rid, 0)), timeout)
                    answer = json.loads(bytes(raw))
                return answer if land is None else await land(answer, rid, timeout)
            except CacheError:
                raise
            except (asyncio.TimeoutError, TimeoutError) as exc:
                self._ctx.cancel_inflight()
                self._ctx.endpoints.forget(self._address)
                raise PeerUnavailable(f"cache node {self.base_url} (ucx) stalled on an object {op}") from exc
            except Exception as exc:  # noqa: BLE001 - UCX errors become ours at the edge
                self._ctx.endpoints.forget(self._address)
                raise PeerUnavailable(f"cache node {self.base_url} (ucx) failed an object {op}: {exc!r}") from exc

    async def put_objects(self, namespace: str, keys: list[str], views: list[memoryview], digests: list[str], *,
                          writer: str | None, background: bool = False) -> dict[str, str]:
        header = ow.call_header(ow.PUT, namespace, keys, [len(v) for v in views], digests, background)
        return (await self._object_call(ow.PUT, header, writer, list(views)))["results"]

    async def get_objects(self, namespace: str, keys: list[str], into: list[memoryview | None],
                          timeout: float | None = None) -> list[memoryview | None]:
        async def land(answer: dict, rid: int, timeout: float) -> list[memoryview | None]:
            try:
                found = ow.parse_answer(answer, len(keys))
            except ValueError as exc:
                raise PeerUnavailable(f"cache node {self.base_url} (ucx): {exc}") from None
            out = [None if f is None else ow.object_buffer(k, f[0], d) for k, f, d in zip(keys, found, into)]
            posted = [v for v in out if v is not None and len(v)]
            bodies = [asyncio.ensure_future(self._ctx.engine.recv(v, w.body_tag(rid, i)))
                      for i, v in enumerate(posted, 1)]
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*bodies)), timeout)
            except BaseException:
                await self._abandon(bodies)
                raise
            for key, f, view in zip(keys, found, out):
                if f is not None and digest(view) != f[1]:
                    raise BlockCorrupt(f"object {key[:80]!r} from {self.base_url} (ucx) failed its digest check")
            return out

        return await self._object_call(ow.GET, ow.call_header(ow.GET, namespace, keys), land=land, timeout=timeout)

    async def exists_objects(self, namespace: str, keys: list[str]) -> list[bool]:
        return (await self._object_call(ow.EXISTS, ow.call_header(ow.EXISTS, namespace, keys)))["exists"]

    async def delete_objects(self, namespace: str, keys: list[str], *, writer: str | None) -> int:
        return (await self._object_call(ow.DELETE, ow.call_header(ow.DELETE, namespace, keys), writer))["deleted"]

    def close(self) -> None:
        """Nothing to close: endpoints belong to the connector's UCX context (closed with it)."""


class UcxConnector:
    """One owner's UCX clients: a UCX context of its own (made with the first client, in the
    running loop, whose thread then progresses it) and one client per node worker address."""

    def __init__(self, options: ChannelOptions) -> None:
        self._options = options
        self._ctx: UcxContext | None = None
        self._clients: ChannelTable[UcxNodeClient] = ChannelTable("ucx")

    def channel(self, url: str, address: str | None = None) -> UcxNodeClient:
        """The client of the node at `url` whose worker advertised `address` (base64)."""
        return self._clients.get(url, address, lambda: self._client(url, address))

    def _client(self, url: str, address: str) -> UcxNodeClient:
        self._ctx = self._ctx or UcxContext()
        return UcxNodeClient(url, address, self._options.token, self._ctx, timeout=self._options.timeout,
                             max_outstanding=self._options.window)

    def digest_seconds(self) -> float:
        return self._clients.digest_seconds()

    async def close(self) -> None:
        self._clients.close()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            loop = ctx.engine.loop
            if loop is asyncio.get_running_loop():
                ctx.close()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(ctx.close)
