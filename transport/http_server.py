"""The node's HTTP endpoints (aiohttp): blocks, stat, list, warm, members, health, metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web

from cachenode.errors import BadRequest, Forbidden, Unauthorized
from cachenode.node import BlockRequest, Node
from cachenode.router import Router
from cachenode.source import SourceRef
from cachenode.warming import select_objects, warm_objects

from .http_sendall import send_block_body
from .wire import (
    AVOID_HEADER, DIGEST_HEADER, FORWARDED_HEADER, TIER_HEADER, error_status, parse_block_request,
)

log = logging.getLogger("cachenode.http")

NODE_KEY = web.AppKey("node", Node)
ROUTER_KEY = web.AppKey("router", Router)
TOKEN_KEY = web.AppKey("token", str)
PUBLIC_PATHS = frozenset({"/healthz"})


def create_app(node: Node, token: str | None, router: Router) -> web.Application:
    """App factory: the node's lifetime is tied to the app's (started on startup, closed on cleanup)."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=16 * 1024**2)
    app[NODE_KEY] = node
    app[ROUTER_KEY] = router
    app[TOKEN_KEY] = token or ""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/block", get_block)
    app.router.add_get("/v1/stat", stat)
    app.router.add_get("/v1/list", list_objects)
    app.router.add_get("/v1/members", members)
    app.router.add_post("/v1/fill", fill)
    app.router.add_post("/v1/warm", warm)
    app.cleanup_ctx.append(_node_lifetime)
    return app


async def _node_lifetime(app: web.Application):
    node, router = app[NODE_KEY], app[ROUTER_KEY]
    await node.start()
    await router.start()
    ucx = None
    if node.config.ucx:
        import base64

        from .ucx_server import UcxServer

        ucx = UcxServer(router, node.config.token)
        router.ucx_address = base64.b64encode(await ucx.start()).decode()
    yield
    if ucx is not None:
        await ucx.close()
    await router.close()
    await node.close()


@web.middleware
async def _auth(request: web.Request, handler):
    token = request.app[TOKEN_KEY]
    if token and request.path not in PUBLIC_PATHS:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise Unauthorized("missing cluster token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(header[len("Bearer "):].encode(), token.encode()):
            raise Forbidden("wrong cluster token")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error with a status
        status, name = error_status(exc)
        node = request.app[NODE_KEY]
        node.metrics.errors.labels(name).inc()
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path_qs, exc)
        return web.json_response({"error": name, "message": str(exc)}, status=status)


async def healthz(request: web.Request) -> web.Response:
    me = request.app[ROUTER_KEY].membership.self_member
    return web.json_response({"ok": True, "id": me.id if me else None,
                              "transports": me.transports if me else {}})


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    node.refresh_metrics()
    body = node.metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def stat(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    ref = SourceRef.from_params(request.query)
    info = await node.stat(ref)
    return web.json_response({"source": str(ref), "size": info.size, "etag": info.etag,
                              "block_size": node.config.block_size})


async def list_objects(request: web.Request) -> web.Response:
    """Objects under a prefix: ?kind&account&container&path=<prefix>."""
    node = request.app[NODE_KEY]
    ref = SourceRef.from_params(request.query, prefix=True)
    items = await node.list(ref, ref.path)
    return web.json_response({"block_size": node.config.block_size, "objects": [
        {**r.to_params(), "size": i.size, "etag": i.etag} for r, i in items]})


async def members(request: web.Request) -> web.Response:
    m = request.app[ROUTER_KEY].membership
    return web.json_response({"self": m.self_id, "members": [x.to_json() for x in m.members()]})


async def fill(request: web.Request) -> web.Response:
    """Warm: fill the listed blocks of one object on this node."""
    return web.json_response(await fill_blocks(request.app[NODE_KEY], await request.json()))


async def fill_blocks(node: Node, payload: dict) -> dict:
    """Fill blocks `indices` of one object here, a few at a time; count those already cached."""
    indices = payload.get("indices")
    if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
        raise BadRequest("fill request needs 'indices': a list of block numbers")
    base = parse_block_request({k: str(v) for k, v in payload.items() if k != "indices"} | {"index": "0"})
    sem = asyncio.Semaphore(node.config.warm_concurrency)

    async def one(i: int) -> bool:
        async with sem:
            return await node.warm_block(BlockRequest(base.ref, base.etag, base.size, base.block_size, i))

    cached = await asyncio.gather(*(one(i) for i in indices))
    return {"blocks": len(indices), "cached": sum(cached)}


async def warm(request: web.Request) -> web.Response:
    """Warm everything under a prefix across the cluster, coordinated by this node."""
    node, router = request.app[NODE_KEY], request.app[ROUTER_KEY]
    body = await request.json()
    ref = SourceRef.from_params(body, prefix=True)
    objects = select_objects(await node.list(ref, ref.path), ref.path)
    me = router.membership.self_id

    async def send_fill(member, payload):
        if member.id == me:
            return await fill_blocks(node, payload)
        return await router.peer(member.url).post_json("/v1/fill", payload, timeout=3600)

    summary = await warm_objects(objects, node.config.block_size, router.membership.members(), send_fill)
    return web.json_response(summary.to_json())


async def get_block(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    req = parse_block_request(request.query)
    verify = request.query.get("verify") == "1"
    forwarded = request.headers.get(FORWARDED_HEADER) == "1"
    avoid = frozenset(a for a in request.headers.get(AVOID_HEADER, "").split(",") if a)
    block = await request.app[ROUTER_KEY].get_block(req, verify=verify, forwarded=forwarded, avoid=avoid)
    headers = {DIGEST_HEADER: block.digest, TIER_HEADER: block.tier}
    await node.governor.foreground(block.length)
    node.governor.own(block.length, "tx")
    node.metrics.served_bytes.inc(block.length)
    node.metrics.served_blocks.labels(block.tier).inc()
    if block.data is not None:
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "application/octet-stream"
        await send_block_body(request, resp, block.data)
        return resp
    if block.path is None:
        raise BadRequest("block has neither data nor file")  # unreachable by construction
    # A verified disk block goes out with sendfile; the client checks the digest end to end.
    resp = web.FileResponse(block.path, headers=headers)
    resp.content_type = "application/octet-stream"
    return resp
