"""The node side of the UCX transport: requests on the worker, replies straight from the block."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

from cachenode.errors import BadRequest

from . import object_wire as ow
from . import ucx_wire as w
from . import wire
from .ucx_engine import UcxEngine

log = logging.getLogger("cachenode.ucx")

# Background requests answered (or waiting for the node to admit them) at once; past that a
# receiver waits, as HTTP's connection cap makes a client wait.
BACKGROUND_PENDING = 64
# Object calls being answered at once (each may receive a batch's objects); past that a receiver waits.
OBJECT_PENDING = 64
# Seconds a node waits for each message of an object call the client announced (its header, each
# object of a put) before it gives the call up.
OBJECT_RECEIVE_TIMEOUT = 10.0


class UcxServer:
    """Serves blocks over UCX, using the worker-address path (see README: why not the listener).

    Its UCX worker is its own (an engine progressed by the node's loop, from start to close).
    """

    def __init__(self, service, receivers: int = 16, max_endpoints: int | None = None) -> None:
        self.service = service  # the node service (base.NodeApi), the same as HTTP's
        self._receivers = receivers
        self._max_endpoints = max_endpoints  # reply endpoints kept (the node's connection cap)
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._pending = asyncio.Semaphore(BACKGROUND_PENDING)
        self._object_pending = asyncio.Semaphore(OBJECT_PENDING)
        self.address = b""

    async def start(self) -> str:
        """Start receiving; the worker address members advertise (base64)."""
        engine = self._engine = UcxEngine()
        self._eps = w.Endpoints(engine, cap=self._max_endpoints)
        self.address = engine.address
        self._tasks = [asyncio.ensure_future(self._serve()) for _ in range(self._receivers)]
        return base64.b64encode(self.address).decode()

    async def close(self) -> None:
        for t in [*self._tasks, *self._background]:
            t.cancel()
        # A receive posted on the worker does not always notice the cancel: do not wait forever.
        if self._tasks:  # nothing to wait for when start() never got that far
            await asyncio.wait(self._tasks, timeout=1.0)
            self._engine.close()  # withdraws the receives still posted

    async def _serve(self) -> None:
        while True:
            buf = bytearray(w.REQUEST_SIZE)
            await self._engine.recv(buf, w.REQUEST_TAG)
            try:
                req_id, reply_to, fields = w.unpack_request(buf)
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("dropped malformed UCX request: %s", exc)
                continue
            if ow.UCX_OP in fields:
                # An object call receives more messages (its header, a put's objects): on a task
                # of its own, so the receivers keep taking requests.
                await self._object_pending.acquire()
                task = asyncio.ensure_future(self._object_logged(req_id, reply_to, fields))
                self._background.add(task)
                task.add_done_callback(self._object_done)
                continue
            if fields.get(wire.PRIORITY) == wire.BACKGROUND:
                # A background answer lasts a whole paced transfer: on a task of its own, so the
                # receivers stay free for foreground requests (at most BACKGROUND_PENDING wait).
                await self._pending.acquire()
                task = asyncio.ensure_future(self._answer_logged(req_id, reply_to, fields))
                self._background.add(task)
                task.add_done_callback(self._background_done)
                continue
            await self._answer_logged(req_id, reply_to, fields)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        self._pending.release()

    def _object_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        self._object_pending.release()

    async def _object_logged(self, req_id: int, reply_to: bytes, fields: dict) -> None:
        try:
            ep = await self._eps.acquire(reply_to)
            try:
                await self._object_call(ep, req_id, fields)
            except asyncio.TimeoutError:
                # A client that went away mid-call: error handling is off, so a send to it may
                # never complete. Drop its endpoint rather than keep the call's slot forever.
                self._eps.forget(reply_to)
                raise
            finally:
                self._eps.release(reply_to)
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the receiver
            log.warning("UCX object reply %d failed: %s", req_id, exc)

    async def _upload(self, buf: bytearray, upload: int, piece: int) -> bytearray:
        await asyncio.wait_for(self._engine.recv(buf, w.upload_tag(upload, piece)), OBJECT_RECEIVE_TIMEOUT)
        return buf

    async def _object_call(self, ep, req_id: int, fields: dict) -> None:
        """An object call: its header (and a put's objects, each into a buffer of its announced,
        checked size) arrive as messages tagged with the call's upload id; the answer is a reply
        header, the answer's JSON, then a get's objects straight from the store's buffers."""
        bodies: list = []
        try:
            self.service.authorize(str(fields.get(wire.UCX_TOKEN) or "") or None)
            upload, hlen = fields.get(ow.UCX_UPLOAD), fields.get(ow.UCX_HEADER_LENGTH)
            if type(upload) is not int:
                raise BadRequest("UCX object call needs an upload id")
            op = str(fields.get(ow.UCX_OP))
            header = fields.get(ow.UCX_INLINE)
            if header is None:  # too big to ride in the request: it follows as upload piece 0
                if type(hlen) is not int or not 0 < hlen <= ow.MAX_HEADER:
                    raise BadRequest("UCX object call needs its header inline or a header length")
                header = ow.parse_header(await self._upload(bytearray(hlen), upload, 0))
            if not isinstance(header, dict):
                raise BadRequest("UCX object call header must be a JSON object")
            call = ow.decode_object_call(op, header)
            writer = str(fields.get(ow.UCX_WRITER) or "") or None
            if call.op == ow.PUT:
                pieces = iter(range(1, w.MAX_PIECES))

                async def receive(n: int) -> bytearray:
                    piece = next(pieces)  # numbered by position; an empty object has no message
                    return await self._upload(bytearray(n), upload, piece) if n else bytearray()

                answer = {"results": await self.service.put_objects(call, writer, receive)}
            elif call.op == ow.GET:
                found = await self.service.get_objects(call)
                answer = ow.answer_header([None if f is None else (len(f[0]), f[1]) for f in found])
                bodies = [f[0] for f in found if f is not None and len(f[0])]
            elif call.op == ow.EXISTS:
                answer = {"exists": self.service.exists_objects(call)}
            else:
                answer = {"deleted": self.service.delete_objects(call, writer)}
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            status, body = self.service.failed(exc)
            await _sent(ep.send(w.pack_header(status, body), w.header_tag(req_id)))
            return
        raw = json.dumps(answer, separators=(",", ":")).encode()
        if len(raw) <= w.HEADER_SIZE - 64:  # the answer rides in the reply header
            await _sent(ep.send(w.pack_header(200, {ow.UCX_INLINE: answer}), w.header_tag(req_id)))
        else:
            await _sent(ep.send(w.pack_header(200, {ow.UCX_HEADER_LENGTH: len(raw)}), w.header_tag(req_id)))
            await _sent(ep.send(raw, w.body_tag(req_id, 0)))
        # Every object at once (the store's bytes, no copy): the client has posted a receive for each.
        await _sent(asyncio.gather(*(ep.send(data, w.body_tag(req_id, i))
                                     for i, data in enumerate(bodies, 1))))

    async def _answer_logged(self, req_id: int, reply_to: bytes, fields: dict) -> None:
        try:
            await self._answer(req_id, reply_to, fields)
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the receiver
            log.warning("UCX reply %d failed: %s", req_id, exc)

    async def _answer(self, req_id: int, reply_to: bytes, fields: dict) -> None:
        ep = await self._eps.acquire(reply_to)
        try:
            await self._answer_on(ep, req_id, reply_to, fields)
        finally:
            self._eps.release(reply_to)

    async def _answer_on(self, ep, req_id: int, reply_to: bytes, fields: dict) -> None:
        began = False
        # The client posted the body receive with the header's (a foreground block): every
        # answer then ends with a body message, an empty one after an error, to complete it.
        posted = fields.get(wire.UCX_POSTED) == 1 and fields.get(wire.PRIORITY) != wire.BACKGROUND
        try:
            self.service.authorize(str(fields.get(wire.UCX_TOKEN) or "") or None)
            call = wire.decode_block_call({k: str(v) for k, v in fields.items()},
                                          avoid=fields.get(wire.UCX_AVOID))
            req, args = call.req, {**call.options, "transport": "ucx"}
            if call.background:
                pieces = iter(range(w.MAX_PIECES))

                async def begin(block, piece: int) -> None:
                    nonlocal began
                    began = True
                    await ep.send(w.pack_header(200, {**_block_header(block), wire.BLOCK_PIECE: piece}),
                                  w.header_tag(req_id))

                async def send_piece(view: memoryview) -> None:
                    await ep.send(view, w.body_tag(req_id, next(pieces)))

                await self.service.serve_background(req, begin=begin, write=send_piece, **args)
                return
            block = await self.service.serve(req, **args)
            try:
                data = block.data
                if data is None:  # a verified disk block: no sendfile here, read it once
                    data = await asyncio.to_thread(block.read_file)
            finally:
                block.close()  # the bytes are in `data`: the file may go
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            if began:
                # Mid-body: the client waits for pieces we will not send; it gives up after its
                # patience. A piece it never took may still be posted: drop the endpoint.
                self._eps.forget(reply_to)
                raise
            status, body = self.service.failed(exc)
            await self._reply(ep, req_id, w.pack_header(status, body), b"" if posted else None)
            return
        await self._reply(ep, req_id, w.pack_header(200, _block_header(block)),
                          data if block.length or posted else None)

    async def _reply(self, ep, req_id: int, header: bytearray, body) -> None:
        """The reply header and then (unless None) the body, sent from the block's own buffer.
        The body goes out without waiting for the header's send to complete: both receives
        are posted by then (or the body waits on the client's worker as unexpected until it is),
        and each wait here is a hop through this loop per block."""
        if body is None:
            await ep.send(header, w.header_tag(req_id))
            return
        head = asyncio.ensure_future(ep.send(header, w.header_tag(req_id)))
        try:
            await ep.send(body, w.body_tag(req_id))
        finally:
            await head


async def _sent(send) -> None:
    """An object call's send, within OBJECT_RECEIVE_TIMEOUT (TimeoutError: the client is gone)."""
    await asyncio.wait_for(send, OBJECT_RECEIVE_TIMEOUT)


def _block_header(block) -> dict:
    return {wire.BLOCK_LENGTH: block.length, wire.BLOCK_DIGEST: block.digest, wire.BLOCK_TIER: block.tier}
