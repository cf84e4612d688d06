"""fsspec filesystem `cachenode://<container>/<path>`: reads through the cluster cache."""

from __future__ import annotations

import datetime
import errno
import weakref
from urllib.parse import quote

from fsspec import AbstractFileSystem

from cachenode.blocks import ObjectInfo
from cachenode.errors import InvalidSource, PeerUnavailable, SourceNotFound
from cachenode.source import AZURE, SourceRef

from .api import Client
from .listing import blob_tree


class CachenodeFileSystem(AbstractFileSystem):
    """Blob paths `container/dir/file` of one storage account, read via cachenode nodes.

    Storage options: `nodes` (default $CACHENODE_NODES), `token` ($CACHENODE_TOKEN),
    `account_name` ($AZURE_STORAGE_ACCOUNT_NAME or the connection string's account),
    `background` (True: reads are a prefetch, paced into the links' idle capacity).
    Listings and sizes come from the origin's listing, answered by a node.
    """

    protocol = "cachenode"
    root_marker = ""

    def __init__(self, nodes=None, token=None, account_name=None, background=False, **kwargs) -> None:
        super().__init__(**kwargs)
        self._client = Client(nodes=nodes, token=token, background=_flag(background, "background"))
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

    def _listing(self, container: str, prefix: str) -> list[tuple[str, ObjectInfo]]:
        """(blob name, info) of the blobs in `container` whose names start with `prefix`.

        The prefix is matched as a string ("llama" also finds "llama-2/x"): callers pass a
        directory's "dir/" or filter the names themselves.
        """
        if not container:
            raise NotImplementedError("cachenode:// lists inside a container: name one "
                                      "(cachenode://<container>/...); the account has no listing")
        ref = SourceRef(AZURE, self.account, container, prefix)
        try:
            listing = self._client.list(ref)
        except PeerUnavailable as exc:
            raise SourceNotFound(f"no cache node answered for a listing: {exc}") from None
        return [(r.path, info) for r, info in listing if r.path.startswith(prefix)]

    @staticmethod
    def _file_entry(name: str, info: ObjectInfo) -> dict:
        modified = (datetime.datetime.fromtimestamp(info.modified, datetime.timezone.utc)
                    if info.modified is not None else None)
        return {"name": name, "size": info.size, "type": "file", "etag": info.etag,
                "last_modified": modified}

    @staticmethod
    def _dir_entry(name: str) -> dict:
        return {"name": name, "size": 0, "type": "directory"}

    def _under(self, path: str) -> tuple[str, list[tuple[str, ObjectInfo]]]:
        """(path's prefix inside its container, the blobs below directory `path`)."""
        container, _, inner = path.partition("/")
        prefix = f"{inner}/" if inner else ""
        return container, self._listing(container, prefix)

    def _tree(self, path: str) -> tuple[dict[str, dict], dict[str, dict]]:
        """Files and directories below directory `path`, full names -> entries (one listing)."""
        container, listing = self._under(path)
        files, dirs = blob_tree(path, ((f"{container}/{blob}", info) for blob, info in listing))
        return ({n: self._file_entry(n, info) for n, info in files.items()},
                {d: self._dir_entry(d) for d in dirs})

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        files, dirs = self._tree(path)
        depth = path.count("/") + 1
        out = [e for e in (*files.values(), *dirs.values()) if e["name"].count("/") == depth]
        if not out:
            info = self.info(path)  # a file lists as itself; a missing path raises
            out = [info] if info["type"] == "file" else []
        out.sort(key=lambda e: e["name"])
        return out if detail else [e["name"] for e in out]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """Everything below `path` from one listing (fsspec's default walks directory by
        directory: one request each)."""
        path = self._strip_protocol(path)
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        try:
            info = self.info(path)
        except FileNotFoundError:
            return {} if detail else []
        if info["type"] == "file":
            out = {path: info}
        else:
            files, dirs = self._tree(path)
            out = {**files, **dirs} if withdirs else dict(files)
            if withdirs and path:
                out[path] = info
            if maxdepth is not None:
                limit = path.count("/") + maxdepth
                out = {k: v for k, v in out.items() if k.count("/") <= limit}
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        container, _, inner = path.partition("/")
        # One listing answers both "is it a blob" and "is it a directory" (a prefix of blobs).
        listing = self._listing(container, inner)
        for blob, info in listing:
            if blob == inner and inner:
                return self._file_entry(path, info)
        if not inner or any(blob.startswith(inner + "/") for blob, _ in listing):
            return self._dir_entry(path)  # a container (listed without error) or a prefix
        raise FileNotFoundError(errno.ENOENT, "no such blob or directory", path)

    def modified(self, path):
        """The blob's last-modified time (timezone-aware, UTC), as the origin reports it."""
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(errno.EISDIR, "a blob directory has no modification time", path)
        if info["last_modified"] is None:
            raise NotImplementedError(f"the cache node did not report a modification time for {path}")
        return info["last_modified"]

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise ValueError(f"cachenode:// is read-only: mode {mode!r} not supported")
        path = self._strip_protocol(path)
        try:
            return self._client.open(self._url(path))
        except (SourceNotFound, InvalidSource):
            if self.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path) from None
            raise

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._open(path) as f:
            # Like a slice of the whole file: negative counts from the end, all clamped.
            start, end, _ = slice(start, end).indices(f.size)
            f.seek(start)
            buf = bytearray(max(0, end - start))
            n = f.readinto(buf) if buf else 0
            return bytes(buf[:n])


def _flag(value, name: str) -> bool:
    """A boolean storage option, also as fsspec's config and environment give it (a string)."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("", "0", "false", "no", "off"):
            return False
        raise ValueError(f"storage option {name}={value!r}: expected true or false")
    return bool(value)
