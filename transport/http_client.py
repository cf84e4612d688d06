"""Client side of the HTTP transport: stat, and stream a block straight into a caller's buffer."""

from __future__ import annotations

import asyncio
import json
from typing import Iterable

import aiohttp

from cachenode.blocks import BlockRequest, ObjectInfo
from cachenode.errors import BlockCorrupt, CacheError, PeerUnavailable, UnexpectedReply
from cachenode.placement import Member
from cachenode.source import SourceRef

from . import object_wire as ow
from . import wire
from .base import ChannelOptions
from .channel_table import ChannelTable
from .http_fastpath import ConnectFailed, FastBlockGetter, UnexpectedFraming
from .wire import AVOID_HEADER, DIGEST_HEADER, FORWARDED_HEADER, TIER_HEADER, request_params


class HttpNodeClient:
    """Talks to one cache node. The aiohttp session is shared and owned by the caller."""

    def __init__(self, base_url: str, token: str | None, session: aiohttp.ClientSession,
                 *, read_timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._headers = wire.bearer(token)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout)
        self._read_timeout = read_timeout
        self._fast: FastBlockGetter | None = None

    def __repr__(self) -> str:
        return f"HttpNodeClient({self.base_url})"

    async def members(self) -> list[Member]:
        """The node's view of the cluster."""
        return wire.members_from_wire(await self.get_json(wire.MEMBERS_PATH))

    async def get_json(self, path: str, params: dict | None = None) -> dict:
        return await self._json("GET", path, params=params, timeout=self._timeout)

    async def post_json(self, path: str, body: dict, timeout: float | None = None) -> dict:
        t = aiohttp.ClientTimeout(total=timeout, sock_connect=5) if timeout else self._timeout
        return await self._json("POST", path, json=body, timeout=t)

    async def _json(self, method: str, path: str, **kwargs) -> dict:
        """A JSON call; HTTP errors become ours, connection failures PeerUnavailable."""
        try:
            async with self._session.request(method, f"{self.base_url}{path}", headers=self._headers,
                                             **kwargs) as r:
                if r.status != 200:
                    raise await self._error(r)
                return await r.json()
        except CacheError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PeerUnavailable(f"cache node {self.base_url} unreachable: {exc!r}") from exc

    async def stat(self, ref: SourceRef) -> tuple[ObjectInfo, int]:
        """(size+ETag, the node's block size) for `ref`, answered by the node from its origin."""
        return wire.stat_from_wire(await self.get_json(wire.STAT_PATH, ref.to_params()))

    async def list(self, ref: SourceRef) -> tuple[list[tuple[SourceRef, ObjectInfo]], int]:
        """Objects under the prefix `ref` names, as the node's origin lists them, and the block size."""
        return wire.listing_from_wire(await self.get_json(wire.LIST_PATH, ref.to_params()))

    async def fill(self, payload: dict) -> dict:
        """Have this node fill blocks of one object (warming); waits until they are in."""
        return await self.post_json(wire.FILL_PATH, payload, timeout=3600)

    async def read_block(self, req: BlockRequest, dest: memoryview, *, verify: bool = False,
                         forwarded: str | None = None, avoid: Iterable[str] = (),
                         background: bool = False) -> tuple[str, str]:
        """Fill `dest` (exactly the block's length); returns (tier that served it, digest).

        The body is received by the kernel straight into `dest` (see http_fastpath); after any
        failure the caller must treat `dest` as garbage.
        """
        extra = {}
        if forwarded is not None:
            extra[FORWARDED_HEADER] = forwarded
        if avoid:
            extra[AVOID_HEADER] = ",".join(avoid)
        if self._fast is None:
            self._fast = FastBlockGetter(self.base_url, self._headers)
        try:
            status, headers, body, got_digest = await self._fast.get(
                wire.BLOCK_PATH, request_params(req, verify, background), dest, extra, self._read_timeout,
                patience=wire.BACKGROUND_PATIENCE if background else 0)
        except ConnectFailed as exc:  # down, restarting or unreachable: no transfer began
            raise PeerUnavailable(f"cache node {self.base_url} not reachable: {exc.__cause__!r}") from exc
        except UnexpectedFraming as exc:
            raise UnexpectedReply(f"cache node {self.base_url} sent an unexpected reply to block {req.index} "
                                  f"of {req.ref}: {exc}") from exc
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            raise PeerUnavailable(f"cache node {self.base_url} failed mid-transfer: {exc!r}") from exc
        if status != 200:
            try:
                err = json.loads(bytes(body))
            except ValueError:
                raise UnexpectedReply(f"cache node {self.base_url} answered block {req.index} of {req.ref} "
                                      f"with HTTP {status} and a body that is not JSON: "
                                      f"{bytes(body[:120])!r}") from None
            raise wire.error_from_body(err, f"node {self.base_url}")
        if body is not dest:
            raise BlockCorrupt(f"{self.base_url} sent {len(body)} bytes for the {len(dest)}-byte "
                               f"block {req.index} of {req.ref}")
        expected = headers.get(DIGEST_HEADER.lower(), "")
        if got_digest != expected:
            raise BlockCorrupt(f"block {req.index} of {req.ref} from {self.base_url} failed its digest check")
        return headers.get(TIER_HEADER.lower(), ""), expected

    # -- objects without origin (the ObjectChannel seam, transport/base.py) -------------------

    async def _object_call(self, op: str, header: dict, writer: str | None = None, bodies=(), *,
                           timeout: float | None = None):
        """POST one framed object call; the open response (status 200) for the caller to read.
        The caller's buffers go out as they are (no joined copy of the batch)."""
        head = ow.frame(header)

        async def body():
            yield head
            for view in bodies:
                if len(view):
                    yield view

        headers = dict(self._headers)
        if writer:
            headers[ow.WRITER_HEADER] = writer
        t = aiohttp.ClientTimeout(total=timeout, sock_connect=5, sock_read=self._read_timeout)
        r = await self._session.post(f"{self.base_url}{wire.OBJECTS_PATH}{op}", data=body() if bodies else head,
                                     headers=headers, timeout=t)
        if r.status != 200:
            try:
                raise await self._error(r)
            finally:
                r.release()
        return r

    async def _objects_json(self, op: str, header: dict, writer: str | None = None, bodies=()) -> dict:
        try:
            r = await self._object_call(op, header, writer, bodies)
            try:
                return await r.json()
            finally:
                r.release()
        except CacheError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise PeerUnavailable(f"cache node {self.base_url} failed an object {op}: {exc!r}") from exc

    async def put_objects(self, namespace: str, keys: list[str], views: list[memoryview], digests: list[str], *,
                          writer: str | None, background: bool = False) -> dict[str, str]:
        header = ow.call_header(ow.PUT, namespace, keys, [len(v) for v in views], digests, background)
        return (await self._objects_json(ow.PUT, header, writer, views))["results"]

    async def exists_objects(self, namespace: str, keys: list[str]) -> list[bool]:
        return (await self._objects_json(ow.EXISTS, ow.call_header(ow.EXISTS, namespace, keys)))["exists"]

    async def delete_objects(self, namespace: str, keys: list[str], *, writer: str | None) -> int:
        return (await self._objects_json(ow.DELETE, ow.call_header(ow.DELETE, namespace, keys), writer))["deleted"]

    async def get_objects(self, namespace: str, keys: list[str], into: list[memoryview | None],
                          timeout: float | None = None) -> list[memoryview | None]:
        """Each key's bytes, checked against their digest, in `into[i]` where given (a view of
        the filled length) or a fresh buffer; None for a miss. Within `timeout` seconds."""
        try:
            r = await self._object_call(ow.GET, ow.call_header(ow.GET, namespace, keys), timeout=timeout)
            try:
                content = r.content
                hlen = ow.unpack_prefix(await content.readexactly(ow.PREFIX_SIZE))
                found = ow.parse_answer(ow.parse_header(await content.readexactly(hlen)), len(keys))

                async def read_into(_: int, view: memoryview) -> None:
                    pos = 0
                    while pos < len(view):
                        chunk = await content.read(len(view) - pos)
                        if not chunk:
                            raise asyncio.IncompleteReadError(b"", len(view) - pos)
                        view[pos:pos + len(chunk)] = chunk
                        pos += len(chunk)

                return await ow.land(keys, found, into, read_into, self.base_url)
            finally:
                r.release()
        except CacheError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            raise PeerUnavailable(f"cache node {self.base_url} failed an object get: {exc!r}") from exc

    @property
    def digest_seconds(self) -> float:
        """Time this client has spent checking block digests (see client.loadstats)."""
        return self._fast.digest_seconds if self._fast is not None else 0.0

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()

    async def _error(self, r: aiohttp.ClientResponse) -> CacheError:
        try:
            body = await r.json(content_type=None)
            return wire.error_from_body(body, f"node {self.base_url}")
        except (ValueError, aiohttp.ContentTypeError, AttributeError):
            text = (await r.text(errors="replace"))[:200]
            return UnexpectedReply(f"cache node {self.base_url} answered {r.method} {r.url.path} with "
                                   f"HTTP {r.status} and a body that is not an error of ours: {text!r}")


class HttpConnector:
    """One owner's HTTP clients (a loader's, or a node's to its peers): one aiohttp session,
    made on first use inside the running loop, and one client per node URL."""

    def __init__(self, options: ChannelOptions) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None
        self._clients: ChannelTable[HttpNodeClient] = ChannelTable("http")

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (membership's health checks use it too)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._options.connections_per_node)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def channel(self, url: str, address: str | None = None) -> HttpNodeClient:
        """The client of the node at `url` (HTTP needs no address beyond the URL)."""
        return self._clients.get(url, url, lambda: HttpNodeClient(url, self._options.token, self.session,
                                                                  read_timeout=self._options.timeout))

    def digest_seconds(self) -> float:
        return self._clients.digest_seconds()

    async def close(self) -> None:
        self._clients.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
