"""Client side of the HTTP transport: stat, and stream a block straight into a caller's buffer."""

from __future__ import annotations

import aiohttp

from cachenode.blocks import digest
from cachenode.errors import BlockCorrupt, CacheError, PeerUnavailable
from cachenode.node import BlockRequest
from cachenode.origin import ObjectInfo
from cachenode.source import SourceRef

from .wire import DIGEST_HEADER, error_from_wire, request_params


class HttpNodeClient:
    """Talks to one cache node. The aiohttp session is shared and owned by the caller."""

    def __init__(self, base_url: str, token: str | None, session: aiohttp.ClientSession,
                 *, read_timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout)

    def __repr__(self) -> str:
        return f"HttpNodeClient({self.base_url})"

    async def healthy(self) -> bool:
        try:
            async with self._session.get(f"{self.base_url}/healthz", timeout=self._timeout) as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def stat(self, ref: SourceRef) -> tuple[ObjectInfo, int]:
        """(size+ETag, the node's block size) for `ref`, answered by the node from its origin."""
        try:
            async with self._session.get(f"{self.base_url}/v1/stat", params=ref.to_params(),
                                         headers=self._headers, timeout=self._timeout) as r:
                if r.status != 200:
                    raise await self._error(r)
                body = await r.json()
        except CacheError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PeerUnavailable(f"cache node {self.base_url} unreachable: {exc}") from exc
        return ObjectInfo(int(body["size"]), body["etag"]), int(body["block_size"])

    async def read_block(self, req: BlockRequest, dest: memoryview, *, verify: bool = False) -> str:
        """Fill `dest` (exactly the block's length) and return the tier that served it.

        The body is copied chunk by chunk into `dest` as it arrives; a short or corrupt body
        raises and the caller must treat `dest` as garbage.
        """
        try:
            async with self._session.get(f"{self.base_url}/v1/block",
                                         params=request_params(req, verify),
                                         headers=self._headers, timeout=self._timeout) as r:
                if r.status != 200:
                    raise await self._error(r)
                expected = r.headers.get(DIGEST_HEADER, "")
                tier = r.headers.get("X-Cachenode-Tier", "")
                pos = 0
                async for chunk in r.content.iter_any():
                    end = pos + len(chunk)
                    if end > len(dest):
                        raise BlockCorrupt(f"{self.base_url} sent more than {len(dest)} bytes for block {req.index} of {req.ref}")
                    dest[pos:end] = chunk
                    pos = end
        except CacheError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PeerUnavailable(f"cache node {self.base_url} failed mid-transfer: {exc!r}") from exc
        if pos != len(dest):
            raise PeerUnavailable(
                f"cache node {self.base_url} sent {pos} of {len(dest)} bytes of block {req.index} of {req.ref}")
        if digest(dest) != expected:
            raise BlockCorrupt(f"block {req.index} of {req.ref} from {self.base_url} failed its digest check")
        return tier

    async def _error(self, r: aiohttp.ClientResponse) -> CacheError:
        try:
            body = await r.json(content_type=None)
            return error_from_wire(body.get("error", ""), f"{body.get('message', '')} (node {self.base_url})")
        except (ValueError, aiohttp.ContentTypeError, AttributeError):
            text = (await r.text())[:200]
            return CacheError(f"cache node {self.base_url} answered {r.status}: {text}")
