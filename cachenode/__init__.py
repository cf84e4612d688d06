"""cachenode: a peer-to-peer cluster cache for ML model checkpoints in blob storage."""

from .errors import (
    BadRequest, BlockCorrupt, CacheError, Forbidden, InvalidSource, OriginUnavailable,
    PeerUnavailable, SourceChanged, SourceNotFound, Unauthorized, UnexpectedReply,
)

__version__ = "0.1.0"

__all__ = [
    "open", "aopen", "warm", "Client", "AsyncClient", "ClientConfig", "CacheError", "InvalidSource", "SourceChanged",
    "SourceNotFound", "Forbidden", "Unauthorized", "OriginUnavailable", "PeerUnavailable",
    "BlockCorrupt", "BadRequest", "UnexpectedReply",
]


def __getattr__(name):
    # The loader pulls in aiohttp and the Azure SDK; import it only when used, so the daemon's
    # and tools' start-up does not pay for it twice and `import cachenode` stays cheap.
    if name in ("open", "aopen", "warm", "Client", "AsyncClient", "ClientConfig"):
        from .client import api

        return getattr(api, name)
    raise AttributeError(f"module 'cachenode' has no attribute {name!r}")
