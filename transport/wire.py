"""The wire, spelled once: endpoint paths, headers, request fields, payloads, error <-> status table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from cachenode.blocks import (
    BLOCK_SIZE, ETAG, INDEX, INDICES, SIZE, BlockRequest, ObjectInfo, block_count, check_block_size,
)
from cachenode.errors import (
    BadRequest, BlockCorrupt, CacheError, Forbidden, InvalidSource, OriginUnavailable,
    SourceChanged, SourceNotFound, Unauthorized, UnexpectedReply,
)
from cachenode.placement import Member
from cachenode.source import SourceRef

# Endpoints (all but HEALTH_PATH need `Authorization: Bearer <cluster token>`).
BLOCK_PATH = "/v1/block"
STAT_PATH = "/v1/stat"
LIST_PATH = "/v1/list"
MEMBERS_PATH = "/v1/members"
FILL_PATH = "/v1/fill"
WARM_PATH = "/v1/warm"
# Objects without origin: POST OBJECTS_PATH + op (put, get, exists, delete), a framed body
# (transport/object_wire.py).
OBJECTS_PATH = "/v1/objects/"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
PUBLIC_PATHS = frozenset({HEALTH_PATH})

AUTH_HEADER = "Authorization"
DIGEST_HEADER = "X-Cachenode-Digest"
TIER_HEADER = "X-Cachenode-Tier"
# Set on node-to-node requests, to the node secret: the receiver serves the block itself (one
# hop, never a loop); a wrong value is refused.
FORWARDED_HEADER = "X-Cachenode-Forwarded"
# Member ids the sender already found dead: the receiver leaves them out of its ranking, so a
# fallback request is not forwarded straight back into the same stall.
AVOID_HEADER = "X-Cachenode-Avoid"

# Block request fields (query string on HTTP, JSON on UCX): the source's are SourceRef.to_params,
# the block's (ETAG, SIZE, BLOCK_SIZE, INDEX, INDICES) and the fill body are in cachenode.blocks.
VERIFY = "verify"
# priority=background: a read nobody waits for yet (a prefetch). The node sends it in paced
# pieces into its link's idle capacity, like a warm fill, instead of at once.
PRIORITY, BACKGROUND = "priority", "background"
# A background read may crawl at the link's floor while other traffic has the link, so a
# transfer counts as stalled only after this many peer timeouts without a byte.
BACKGROUND_PATIENCE = 6
# UCX carries in its request what HTTP carries in headers.
UCX_TOKEN, UCX_AVOID = "token", "avoid"
# Set by a UCX client that posted the body receive with the header's: the node then answers an
# error with an empty body message too, so that receive completes (ucxx cannot withdraw one alone).
UCX_POSTED = "posted"

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


def error_body(exc: Exception) -> tuple[int, dict]:
    status, name = error_status(exc)
    return status, {"error": name, "message": str(exc)}


def error_from_body(body, where: str) -> CacheError:
    """Our error for an error body a node sent (`where` names the node and transport)."""
    if not isinstance(body, dict):
        return UnexpectedReply(f"{where} answered with a malformed error body: {str(body)[:200]!r}")
    return error_from_wire(str(body.get("error", "")), f"{body.get('message', '')} ({where})")


# UCX reply header fields of a served block (HTTP sends them as headers); a background block's
# body comes in messages of BLOCK_PIECE bytes (the last one shorter), one tag each.
BLOCK_LENGTH, BLOCK_DIGEST, BLOCK_TIER, BLOCK_PIECE = "length", "digest", "tier", "piece"
# Pieces per block body at most: UCX numbers them in 14 bits of the message tag.
MAX_PIECES = 1 << 14


def error_from_wire(name: str, message: str) -> CacheError:
    """Our error for a wire error name; an internal or unknown one is an UnexpectedReply (the
    member is at fault, not the request: the loader tries the next one)."""
    for cls, _, wire_name in ERRORS:
        if wire_name == name:
            return cls(message)
    return UnexpectedReply(f"unexpected reply, error {name or '(none)'!r}: {message}")


def bearer(token: str | None) -> dict[str, str]:
    return {AUTH_HEADER: f"Bearer {token}"} if token else {}


def request_params(req: BlockRequest, verify: bool = False, background: bool = False) -> dict[str, str]:
    params = req.ref.to_params()
    params.update({ETAG: req.etag, SIZE: str(req.size), BLOCK_SIZE: str(req.block_size), INDEX: str(req.index)})
    if verify:
        params[VERIFY] = "1"
    if background:
        params[PRIORITY] = BACKGROUND
    return params


def parse_block_request(q: Mapping[str, str]) -> BlockRequest:
    """Validate query fields into a BlockRequest; BadRequest names the bad field."""
    ref = SourceRef.from_params(q)
    etag = q.get(ETAG)
    if not etag:
        raise BadRequest(f"block request is missing {ETAG!r}")
    size = _int_field(q, SIZE)
    block_size = _int_field(q, BLOCK_SIZE)
    index = _int_field(q, INDEX)
    try:
        check_block_size(block_size)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return BlockRequest(ref, etag, size, block_size, index)


def wants_verify(q: Mapping[str, str]) -> bool:
    return q.get(VERIFY) == "1"


def wants_background(q: Mapping[str, str]) -> bool:
    """priority=background, or foreground (absent); anything else is refused, naming it."""
    value = q.get(PRIORITY)
    if value is None or value == "foreground":
        return False
    if value == BACKGROUND:
        return True
    raise BadRequest(f"{PRIORITY}={str(value)[:40]!r}: expected 'foreground' or 'background'")


def parse_avoid(value: str | Iterable[str] | None) -> frozenset[str]:
    if not value:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else value
    return frozenset(str(a) for a in items if a)


@dataclass(frozen=True)
class BlockCall:
    """A decoded block request and how to serve it: `options` are the node service's keywords."""

    req: BlockRequest
    background: bool
    options: dict


def decode_block_call(fields: Mapping[str, str], *, forwarded: str | None = None,
                      avoid: str | Iterable[str] | None = None) -> BlockCall:
    """The one decoder of a block call, for every server: the request fields (HTTP's query,
    UCX's JSON), plus what HTTP carries in headers (the forwarded marker, the avoid list).
    BadRequest names the first bad field."""
    req = parse_block_request(fields)
    options = dict(verify=wants_verify(fields), forwarded=forwarded, avoid=parse_avoid(avoid))
    return BlockCall(req, wants_background(fields), options)


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


def parse_fill(payload) -> tuple[BlockRequest, list[int]]:
    """(request for block 0, indices) of a fill payload; BadRequest names what is wrong."""
    if not isinstance(payload, dict):
        raise BadRequest("fill request must be a JSON object")
    indices = payload.get(INDICES)
    if not isinstance(indices, list) or not all(type(i) is int for i in indices):  # bool is an int
        raise BadRequest(f"fill request needs {INDICES!r}: a list of block numbers")
    for k, v in payload.items():
        if k != INDICES and (isinstance(v, bool) or not isinstance(v, (str, int))):
            raise BadRequest(f"fill request field {k!r} must be a string or a number")
    base = parse_block_request({k: str(v) for k, v in payload.items() if k != INDICES} | {INDEX: "0"})
    n = block_count(base.size, base.block_size)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:  # checked before any fill starts: a bad request changes nothing
        raise BadRequest(f"fill {INDICES!r} {bad[:5]} out of range: the object has {n} blocks")
    return base, indices


# Stat and listing field: the object's last-modified time, Unix seconds (optional on the wire:
# an older node does not send it).
MODIFIED = "modified"


def stat_to_wire(ref: SourceRef, info: ObjectInfo, block_size: int) -> dict:
    return {"source": str(ref), SIZE: info.size, ETAG: info.etag, MODIFIED: info.modified,
            "block_size": block_size}


def stat_from_wire(body: dict) -> tuple[ObjectInfo, int]:
    return ObjectInfo(int(body[SIZE]), body[ETAG], _modified(body)), int(body["block_size"])


def listing_to_wire(items: list[tuple[SourceRef, ObjectInfo]], block_size: int) -> dict:
    return {"block_size": block_size,
            "objects": [{**r.to_params(), SIZE: i.size, ETAG: i.etag, MODIFIED: i.modified}
                        for r, i in items]}


def listing_from_wire(body: dict) -> tuple[list[tuple[SourceRef, ObjectInfo]], int]:
    return ([(SourceRef.from_params(o), ObjectInfo(o[SIZE], o[ETAG], _modified(o))) for o in body["objects"]],
            int(body["block_size"]))


def _modified(fields: dict) -> float | None:
    value = fields.get(MODIFIED)
    return float(value) if isinstance(value, (int, float)) else None


def members_to_wire(self_id: str | None, members: list[Member]) -> dict:
    return {"self": self_id, "members": [m.to_json() for m in members]}


def members_from_wire(body: dict) -> list[Member]:
    return [Member.from_json(m) for m in body["members"]]
