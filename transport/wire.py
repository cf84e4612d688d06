"""The block and stat request fields as they travel, and error <-> HTTP status mapping."""

from __future__ import annotations

from typing import Mapping

from cachenode.blocks import check_block_size
from cachenode.errors import (
    BadRequest, BlockCorrupt, CacheError, Forbidden, InvalidSource, OriginUnavailable,
    SourceChanged, SourceNotFound, Unauthorized,
)
from cachenode.node import BlockRequest
from cachenode.source import SourceRef

DIGEST_HEADER = "X-Cachenode-Digest"
TIER_HEADER = "X-Cachenode-Tier"
# Set on node-to-node requests, to the node secret: the receiver serves the block itself (one
# hop, never a loop); a wrong value is refused.
FORWARDED_HEADER = "X-Cachenode-Forwarded"
# Member ids the sender already found dead: the receiver leaves them out of its ranking, so a
# fallback request is not forwarded straight back into the same stall.
AVOID_HEADER = "X-Cachenode-Avoid"

# (exception class, HTTP status, wire name): most specific first.
ERRORS: list[tuple[type[Exception], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (SourceNotFound, 404, "not_found"),
    (SourceChanged, 412, "source_changed"),
    (InvalidSource, 400, "invalid_source"),
    (BadRequest, 400, "bad_request"),
    (OriginUnavailable, 502, "origin_unavailable"),
    (BlockCorrupt, 502, "block_corrupt"),
]


def error_status(exc: Exception) -> tuple[int, str]:
    for cls, status, name in ERRORS:
        if isinstance(exc, cls):
            return status, name
    return 500, "internal"


def error_from_wire(name: str, message: str) -> CacheError:
    for cls, _, wire_name in ERRORS:
        if wire_name == name:
            return cls(message)
    return CacheError(message)


def request_params(req: BlockRequest, verify: bool = False) -> dict[str, str]:
    params = req.ref.to_params()
    params.update(etag=req.etag, size=str(req.size), bs=str(req.block_size), index=str(req.index))
    if verify:
        params["verify"] = "1"
    return params


def parse_block_request(q: Mapping[str, str]) -> BlockRequest:
    """Validate query fields into a BlockRequest; BadRequest names the bad field."""
    ref = SourceRef.from_params(q)
    etag = q.get("etag")
    if not etag:
        raise BadRequest("block request is missing 'etag'")
    size = _int_field(q, "size")
    block_size = _int_field(q, "bs")
    index = _int_field(q, "index")
    try:
        check_block_size(block_size)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return BlockRequest(ref, etag, size, block_size, index)


def _int_field(q: Mapping[str, str], name: str) -> int:
    raw = q.get(name)
    if raw is None:
        raise BadRequest(f"block request is missing {name!r}")
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise BadRequest(f"{name}={value} must not be negative")
    return value
