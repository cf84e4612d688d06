"""The node's HTTP endpoints (aiohttp): blocks, stat, health, metrics; token auth."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from cachenode.errors import BadRequest, Forbidden, Unauthorized
from cachenode.node import Node
from cachenode.source import SourceRef

from .wire import DIGEST_HEADER, TIER_HEADER, error_status, parse_block_request

log = logging.getLogger("cachenode.http")

NODE_KEY = web.AppKey("node", Node)
TOKEN_KEY = web.AppKey("token", str)
PUBLIC_PATHS = frozenset({"/healthz"})


def create_app(node: Node, token: str | None) -> web.Application:
    """App factory: the node's lifetime is tied to the app's (started on startup, closed on cleanup)."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=1024**2)
    app[NODE_KEY] = node
    app[TOKEN_KEY] = token or ""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/block", get_block)
    app.router.add_get("/v1/stat", stat)
    app.cleanup_ctx.append(_node_lifetime)
    return app


async def _node_lifetime(app: web.Application):
    node = app[NODE_KEY]
    await node.start()
    yield
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
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[NODE_KEY].metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def stat(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    ref = SourceRef.from_params(request.query)
    info = await node.stat(ref)
    return web.json_response({"source": str(ref), "size": info.size, "etag": info.etag,
                              "block_size": node.config.block_size})


async def get_block(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    req = parse_block_request(request.query)
    verify = request.query.get("verify") == "1"
    block = await node.get_block(req, verify=verify)
    headers = {DIGEST_HEADER: block.digest, TIER_HEADER: block.tier}
    node.metrics.served_bytes.inc(block.length)
    node.metrics.served_blocks.labels(block.tier).inc()
    if block.data is not None:
        return web.Response(body=block.data, headers=headers, content_type="application/octet-stream")
    if block.path is None:
        raise BadRequest("block has neither data nor file")  # unreachable by construction
    # A verified disk block goes out with sendfile; the client checks the digest end to end.
    resp = web.FileResponse(block.path, headers=headers)
    resp.content_type = "application/octet-stream"
    return resp
