"""fsspec filesystem `cachenode://<container>/<path>`: reads through the cluster cache."""

from __future__ import annotations

import posixpath
import weakref
from urllib.parse import quote

from fsspec import AbstractFileSystem

from cachenode.blocks import ObjectInfo
from cachenode.errors import PeerUnavailable, SourceNotFound
from cachenode.source import AZURE, SourceRef

from .api import Client


class CachenodeFileSystem(AbstractFileSystem):
    """Blob paths `container/dir/file` of one storage account, read via cachenode nodes.

    Storage options: `nodes` (default $CACHENODE_NODES), `token` ($CACHENODE_TOKEN),
    `account_name` ($AZURE_STORAGE_ACCOUNT_NAME or the connection string's account).
    Listings and sizes come from the origin's listing, answered by a node.
    """

    protocol = "cachenode"
    root_marker = ""

    def __init__(self, nodes=None, token=None, account_name=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._client = Client(nodes=nodes, token=token)
        # fsspec caches filesystem instances and has no close(): release the I/O thread with us.
        weakref.finalize(self, self._client.close)
        self.account = account_name or self._client.config.azure.account
        if not self.account:
            raise ValueError("cachenode:// needs a storage account: pass account_name= or set "
                             "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_CONNECTION_STRING")

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("cachenode://"):
            path = path[len("cachenode://"):]
        return path.strip("/")

    def _url(self, path: str) -> str:
        # Host-style URL: names the account explicitly (nodes use their own endpoint for it).
        # Quoted here, unquoted once by the URL parser: every blob name reaches the node as is.
        return f"https://{self.account}.blob.core.windows.net/{quote(self._strip_protocol(path), safe='/')}"

    def _listing(self, prefix: str) -> list[tuple[SourceRef, ObjectInfo]]:
        container, _, inner = self._strip_protocol(prefix).partition("/")
        ref = SourceRef(AZURE, self.account, container, inner)
        try:
            return self._client.list(ref)
        except PeerUnavailable as exc:
            raise SourceNotFound(f"no cache node answered for a listing: {exc}") from None

    def _level(self, path: str) -> list[dict]:
        """Entries directly under directory `path` ("container" or "container/dir")."""
        prefix = path + "/"
        entries: dict[str, dict] = {}
        for ref, info in self._listing(prefix):
            full = f"{ref.container}/{ref.path}"
            head, sep, _ = full[len(prefix):].partition("/")
            if sep:  # blob names with more slashes are "directories" at this level
                entries.setdefault(prefix + head, {"name": prefix + head, "size": 0, "type": "directory"})
            else:
                entries[full] = {"name": full, "size": info.size, "type": "file", "etag": info.etag}
        return sorted(entries.values(), key=lambda e: e["name"])

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        out = self._level(path) or [self.info(path)]
        return out if detail else [e["name"] for e in out]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        if "/" in path:
            for entry in self._level(posixpath.dirname(path)):
                if entry["name"] == path:
                    return entry
        elif self._level(path):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise ValueError(f"cachenode:// is read-only: mode {mode!r} not supported")
        return self._client.open(self._url(path))

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._open(path) as f:
            size = f.size
            start = 0 if start is None else (start + size if start < 0 else start)
            end = size if end is None else (end + size if end < 0 else min(end, size))
            f.seek(start)
            buf = bytearray(max(0, end - start))
            n = f.readinto(buf)
            return bytes(buf[:n])
