"""The node's HTTP endpoints (aiohttp): decode a request, call the node service, write the answer."""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web

from cachenode.blocks import Block, BlockRequest
from cachenode.errors import BadRequest, CacheError
from cachenode.source import SourceRef

from . import wire
from .http_paced import send_background
from .http_sendall import send_block_body, send_file_body

log = logging.getLogger("cachenode.http")


class NodeApi(Protocol):
    """What the servers call: the node service (cachenode.node.service.NodeService)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def authorize(self, token: str | None) -> None: ...
    def failed(self, exc: Exception) -> tuple[int, dict]: ...
    def refused(self, kind: str) -> None: ...
    def client_gone(self) -> None: ...
    async def serve(self, req: BlockRequest, *, verify: bool = False, forwarded: str | None = None,
                    avoid: frozenset[str] = frozenset(), transport: str = "http") -> Block: ...
    def background_pace(self) -> float | None: ...
    async def serve_background(self, req: BlockRequest, *, begin, write, verify: bool = False,
                               forwarded: str | None = None, avoid: frozenset[str] = frozenset(),
                               transport: str = "http") -> None: ...
    async def stat(self, ref: SourceRef) -> dict: ...
    async def list(self, ref: SourceRef) -> dict: ...
    def members(self) -> dict: ...
    def health(self) -> dict: ...
    def metrics_text(self) -> bytes: ...
    async def fill(self, payload) -> dict: ...
    async def warm(self, body) -> dict: ...


SERVICE_KEY = web.AppKey("service", NodeApi)


def create_app(service: NodeApi) -> web.Application:
    """App factory: the service's lifetime is tied to the app's (started on startup, closed on cleanup)."""
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
    app.cleanup_ctx.append(_service_lifetime)
    return app


async def _service_lifetime(app: web.Application):
    service = app[SERVICE_KEY]
    await service.start()
    yield
    await service.close()


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
    q = request.query
    service = request.app[SERVICE_KEY]
    args = dict(verify=wire.wants_verify(q), forwarded=request.headers.get(wire.FORWARDED_HEADER),
                avoid=wire.parse_avoid(request.headers.get(wire.AVOID_HEADER)))
    req = wire.parse_block_request(q)
    if wire.wants_background(q):
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
