"""Canonical source identity: URLs and wire fields parsed into one immutable, checked SourceRef."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import InvalidSource

AZURE = "azure"
FILE = "file"

_CONTAINER_RE = re.compile(r"^(\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Host-style blob endpoints: <account>.blob.core.windows.net and sovereign-cloud suffixes.
_HOST_STYLE_RE = re.compile(r"^([a-z0-9]{3,24})\.blob\.[a-z0-9.-]+$")


@dataclass(frozen=True)
class SourceRef:
    """One object at an origin: an Azure blob or a local file.

    `endpoint` is only what the URL itself said (a blob service URL); nodes ignore it and use
    their own configured endpoint for the account, so a client can never steer a node to a host.
    """

    kind: str
    account: str
    container: str
    path: str
    endpoint: str | None = None

    def __post_init__(self) -> None:
        # Canonical by construction: however a SourceRef is made (URL, wire fields, a listing,
        # code), it cannot name a path that something further down would read differently.
        if self.kind == FILE:
            if not self.path.startswith("/"):
                raise InvalidSource(f"{self.path!r}: file sources need an absolute path")
            if self.path != "/":
                check_segments(self.path[1:], self.path, prefix=True)
        elif self.kind == AZURE:
            if not _ACCOUNT_RE.match(self.account) or not _CONTAINER_RE.match(self.container):
                raise InvalidSource(f"{self.account!r}/{self.container!r} is not a valid account/container")
            if self.path:
                check_segments(self.path, self.path, prefix=True)
        else:
            raise InvalidSource(f"unknown source kind {self.kind!r} (expected 'azure' or 'file')")

    def __str__(self) -> str:
        if self.kind == FILE:
            return f"file://{self.path}"
        return f"az://{self.account}/{self.container}/{self.path}"

    def to_params(self) -> dict[str, str]:
        """The fields a node needs to identify the object (sent on the wire)."""
        return {"kind": self.kind, "account": self.account, "container": self.container,
                "path": self.path}

    @classmethod
    def from_params(cls, params, *, prefix: bool = False) -> "SourceRef":
        """Rebuild a SourceRef from wire fields, validating them as strictly as a URL."""
        try:
            kind, account = params["kind"], params.get("account", "")
            container, path = params.get("container", ""), params["path"]
        except KeyError as exc:
            raise InvalidSource(f"request is missing source field {exc.args[0]!r}") from None
        for name, value in (("kind", kind), ("account", account), ("container", container), ("path", path)):
            if not isinstance(value, str):
                raise InvalidSource(f"source field {name!r} must be a string, not {type(value).__name__}")
        if kind == FILE:
            return _file_ref(path, original=path, prefix=prefix)
        if kind != AZURE:
            raise InvalidSource(f"unknown source kind {kind!r} (expected 'azure' or 'file')")
        return _azure_ref(account, container, path, None, original=f"{account}/{container}/{path}",
                          prefix=prefix)


def parse_source(url: str, default_account: str | None = None, *, prefix: bool = False) -> SourceRef:
    """Parse a user-facing URL into a SourceRef, or raise InvalidSource naming the URL.

    Accepted: az://<container>/<path> (account from configuration), abfs:// likewise,
    https://<account>.blob.core.windows.net/<container>/<path>, path-style
    http(s)://host:port/<account>/<container>/<path> (Azurite), and file:///<absolute path>.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidSource(f"empty or non-string source URL: {url!r}")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidSource(f"{url!r}: file:// URLs must be local (file:///absolute/path)")
        return _file_ref(unquote(parts.path), original=url, prefix=prefix)
    if scheme in ("az", "abfs", "azure"):
        if not default_account:
            raise InvalidSource(
                f"{url!r} names no storage account: set AZURE_STORAGE_ACCOUNT_NAME or "
                "AZURE_STORAGE_CONNECTION_STRING, or use an https://<account>.blob.core.windows.net URL"
            )
        container, _, path = (parts.netloc + unquote(parts.path)).partition("/")
        return _azure_ref(default_account, container, path, None, original=url, prefix=prefix)
    if scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        segments = unquote(parts.path).lstrip("/")
        m = _HOST_STYLE_RE.match(host)
        if m:
            container, _, path = segments.partition("/")
            return _azure_ref(m.group(1), container, path, f"{scheme}://{parts.netloc}", original=url,
                              prefix=prefix)
        account, _, rest = segments.partition("/")
        container, _, path = rest.partition("/")
        endpoint = f"{scheme}://{parts.netloc}/{account}"
        return _azure_ref(account, container, path, endpoint, original=url, prefix=prefix)
    raise InvalidSource(
        f"unsupported URL scheme in {url!r}: use az://, https://<account>.blob.core.windows.net/, "
        "an Azurite http:// URL, or file:///"
    )


def _azure_ref(account: str, container: str, path: str, endpoint: str | None, *, original: str,
               prefix: bool = False) -> SourceRef:
    if not _ACCOUNT_RE.match(account or ""):
        raise InvalidSource(f"{original!r}: {account!r} is not a valid storage account name")
    if not _CONTAINER_RE.match(container or ""):
        raise InvalidSource(
            f"{original!r}: {container!r} is not a valid container name "
            "(3-63 lowercase letters, digits and single hyphens)"
        )
    if not prefix and (not path or path.endswith("/")):
        raise InvalidSource(f"{original!r} names no blob inside container {container!r}")
    if len(path) > 1024:
        raise InvalidSource(f"{original!r}: blob name longer than 1024 characters")
    if path:
        check_segments(path, original, prefix=prefix)
    return SourceRef(AZURE, account, container, path, endpoint)


def _file_ref(path: str, *, original: str, prefix: bool = False) -> SourceRef:
    if not path.startswith("/"):
        raise InvalidSource(f"{original!r}: file sources need an absolute path (file:///...)")
    if path != "/" or not prefix:
        check_segments(path[1:], original, prefix=prefix)
    return SourceRef(FILE, "", "", path)


def check_segments(path: str, original: str, *, prefix: bool = False) -> None:
    """Refuse a path that something further down could read as another path.

    The path is canonical already or refused: no empty, `.` or `..` segments, not even
    percent-encoded ones (HTTP stacks on the way to the origin normalise `%2e%2e` to `..` and
    then `a/../b` to `b`, which would step out of the container the allow-list checked), and no
    control characters. Percent-encoding it for the origin happens once, where the request is
    built (the Azure SDK quotes the blob name; we never pre-quote it).
    """
    bad = _CONTROL_RE.search(path)
    if bad:
        raise InvalidSource(f"{original!r}: control character {bad.group()!r} in path {path!r}")
    segments = path.split("/")
    if prefix and segments[-1] == "":
        segments.pop()  # a prefix may end in "/" (a directory)
    for seg in segments:
        if seg == "":
            raise InvalidSource(f"{original!r}: empty segment in path {path!r}")
        if seg in (".", "..") or unquote(seg) in (".", ".."):
            raise InvalidSource(f"{original!r}: {seg!r} segment in path {path!r} (dot segments are refused)")
