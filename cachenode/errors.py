"""The error hierarchy: one root, each subclass also the built-in error it resembles."""

from __future__ import annotations


class CacheError(Exception):
    """Root of every error cachenode raises on purpose."""


class InvalidSource(CacheError, ValueError):
    """A URL or source description that cachenode cannot interpret."""


class SourceChanged(CacheError, OSError):
    """The blob was replaced after its version (ETag) was pinned; no mixed bytes are returned."""

    @classmethod
    def pinned(cls, source: str, pinned_etag: str, detail: str = "") -> "SourceChanged":
        msg = f"{source} changed while being read (pinned ETag {pinned_etag})"
        return cls(msg + (f": {detail}" if detail else ""))


class SourceNotFound(CacheError, FileNotFoundError):
    """The blob, container or file does not exist at the origin."""


class Forbidden(CacheError, PermissionError):
    """The request is understood but not allowed (allow-list, token, or origin credentials)."""


class Unauthorized(Forbidden):
    """No valid cluster token was presented."""


class OriginUnavailable(CacheError, ConnectionError):
    """The origin (blob endpoint) could not be reached or kept failing after retries."""


class PeerUnavailable(CacheError, ConnectionError):
    """A cache node could not be reached, or dropped a transfer half way."""


class UnexpectedReply(PeerUnavailable):
    """A cache node answered in a way the loader does not expect (an internal error, an unknown
    status or a malformed response): said with what came back, and that member is tried later."""


class BlockCorrupt(CacheError, OSError):
    """Block bytes did not match their xxh3-128 digest."""


class BadRequest(CacheError, ValueError):
    """A block or range request that is out of bounds or malformed."""
