"""The node's HTTP endpoints (aiohttp): decode a request, call the node service, write the answer."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from cachenode.errors import BadRequest, CacheError
from cachenode.source import SourceRef

from . import object_wire as ow
from . import wire
from .base import NodeApi
from .http_paced import send_background
from .http_sendall import send_block_body, send_body_parts, send_file_body

log = logging.getLogger("cachenode.http")


SERVICE_KEY = web.AppKey("service", NodeApi)


def create_app(service: NodeApi) -> web.Application:
    """App factory: the node's endpoints in front of `service` (whose parts the node's
    composition root starts before the app and closes after it)."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=16 * 1024**2)
    app[SERVICE_KEY] = service
    app.router.add_get(wire.HEALTH_PATH, healthz)
    app.router.add_get(wire.METRICS_PATH, metrics)
    app.router.add_get(wire.BLOCK_PATH, get_block)
    app.router.add_get(wire.STAT_PATH, stat)
    app.router.add_get(wire.LIST_PATH, list_objects)
    app.router.add_get(wire.MEMBERS_PATH, members)
    app.router.add_post(wire.FILL_PATH, fill)
    app.router.add_post(wire.WARM_PATH, warm)
    app.router.add_post(wire.OBJECTS_PATH + "{op}", objects)
    return app


@web.middleware
async def _auth(request: web.Request, handler):
    if request.path not in wire.PUBLIC_PATHS:
        header = request.headers.get(wire.AUTH_HEADER)
        token = header[len("Bearer "):] if header and header.startswith("Bearer ") else None
        request.app[SERVICE_KEY].authorize(token)
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:  # aiohttp's own refusals (no such path, wrong method): counted too
            request.app[SERVICE_KEY].refused(f"http_{exc.status}")
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error with a status
        if (isinstance(exc, ConnectionError) and not isinstance(exc, CacheError)
                and (request.transport is None or request.transport.is_closing())):
            # The client hung up mid-response (our own errors are ConnectionErrors too, e.g.
            # an unreachable origin): nothing to answer and nothing wrong here.
            request.app[SERVICE_KEY].client_gone()
            return web.Response(status=499)
        status, body = request.app[SERVICE_KEY].failed(exc)
        return web.json_response(body, status=status)


async def _json_body(request: web.Request):
    try:
        return await request.json()
    except ValueError:
        raise BadRequest(f"{request.path} needs a JSON body") from None


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].health())


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SERVICE_KEY].metrics_text(), content_type="text/plain", charset="utf-8")


async def stat(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SERVICE_KEY].stat(SourceRef.from_params(request.query)))


async def list_objects(request: web.Request) -> web.Response:
    """Objects under a prefix: ?kind&account&container&path=<prefix>."""
    ref = SourceRef.from_params(request.query, prefix=True)
    return web.json_response(await request.app[SERVICE_KEY].list(ref))


async def members(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].members())


async def fill(request: web.Request) -> web.Response:
    """Warm: fill the listed blocks of one object on this node."""
    return web.json_response(await request.app[SERVICE_KEY].fill(await _json_body(request)))


async def warm(request: web.Request) -> web.Response:
    """Warm everything under a prefix across the cluster, coordinated by this node."""
    return web.json_response(await request.app[SERVICE_KEY].warm(await _json_body(request)))


async def get_block(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    call = wire.decode_block_call(request.query, forwarded=request.headers.get(wire.FORWARDED_HEADER),
                                  avoid=request.headers.get(wire.AVOID_HEADER))
    req, args = call.req, call.options
    if call.background:
        return await send_background(request, service, req, args)
    block = await service.serve(req, **args)
    try:
        headers = {wire.DIGEST_HEADER: block.digest, wire.TIER_HEADER: block.tier}
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "application/octet-stream"
        if block.data is not None:
            await send_block_body(request, resp, block.data)
        else:
            # A verified disk block goes out with sendfile from the file the tier opened for
            # us (evicted or not meanwhile); the client checks the digest end to end.
            await send_file_body(request, resp, block.file, block.length)
        return resp
    finally:
        block.close()


async def objects(request: web.Request) -> web.StreamResponse:
    """An object batch: a frame (prefix, JSON header, a put's objects) in, JSON or a frame out.

    The header is read whole (bounded: object_wire.MAX_HEADER); a put's objects are read one at
    a time into buffers of their announced size, which the service checked first; nothing is
    buffered beyond that, and a body cut off mid-object fails the call with nothing stored."""
    service = request.app[SERVICE_KEY]
    op = request.match_info["op"]
    content = request.content

    receive = content_reader(content)
    hlen = ow.unpack_prefix(bytes(await receive(ow.PREFIX_SIZE)))
    call = ow.decode_object_call(op, ow.parse_header(await receive(hlen)))
    writer = request.headers.get(ow.WRITER_HEADER)
    if call.op == ow.PUT:
        return web.json_response({"results": await service.put_objects(call, writer, receive)})
    if call.op == ow.EXISTS:
        return web.json_response({"exists": service.exists_objects(call)})
    if call.op == ow.DELETE:
        return web.json_response({"deleted": service.delete_objects(call, writer)})
    found = await service.get_objects(call)
    resp = web.StreamResponse()
    resp.content_type = "application/octet-stream"
    head = ow.frame(ow.answer_header([None if f is None else (len(f[0]), f[1]) for f in found]))
    # The store's own bytes (never mutated) go out as they are: no copy.
    await send_body_parts(request, resp, [head, *(f[0] for f in found if f is not None and len(f[0]))])
    return resp


def content_reader(content):
    """`receive(n)` for the service: the next n bytes of the body, into a buffer of their own."""

    async def receive(n: int) -> bytearray:
        buf = bytearray(n)
        view, pos = memoryview(buf), 0
        try:
            while pos < n:
                chunk = await content.read(n - pos)  # at most what this object still needs
                if not chunk:
                    break
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if pos < n:
            raise BadRequest(f"object put body ended after {pos} of {n} bytes of an object: nothing was stored")
        return buf

    return receive
