"""Objects without origin: namespace and key rules, the (namespace, key) identity, placement and batch results."""

from __future__ import annotations

import re

import xxhash

from .errors import BadRequest

MAX_KEY_LENGTH = 1024
# A namespace names a tenant on the command line and in Prometheus labels: keep it plain.
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# What a put answers per key: first writer wins, objects are immutable.
STORED, EXISTS = "stored", "exists"


def check_namespace(namespace: object) -> str:
    """`namespace` if it is a valid name (1-64 of letters, digits, `._-`), else BadRequest naming it."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise BadRequest(f"namespace {str(namespace)[:80]!r} is not a valid name: 1-64 letters, digits, '.', "
                         f"'_' or '-', starting with a letter or digit")
    return namespace


def check_key(key: object) -> str:
    """`key` if it is a valid object key (a str of 1..1024 characters, no control characters),
    else BadRequest naming the key."""
    if not isinstance(key, str):
        raise BadRequest(f"object key {key!r:.80} must be a str, not {type(key).__name__}")
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise BadRequest(f"object key {key[:80]!r}{'...' if len(key) > 80 else ''} has {len(key)} characters: "
                         f"keys are 1..{MAX_KEY_LENGTH}")
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in key):
        raise BadRequest(f"object key {key[:80]!r} contains a control character")
    return key


def check_keys(keys) -> list[str]:
    """Every key checked (BadRequest names the first bad one); duplicates are refused too, since a
    batch answer is one entry per key."""
    out = [check_key(k) for k in keys]
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dup = next(k for k in out if k in seen or seen.add(k))
        raise BadRequest(f"object key {dup[:80]!r} appears twice in one batch")
    return out


def object_key(namespace: str, key: str) -> str:
    """The store and placement key of (namespace, key): xxh3-128 hex over both, length-prefixed,
    under a label of its own, so an object never shares a key with a checkpoint block or with
    another namespace's object of the same name."""
    h = xxhash.xxh3_128()
    for part in (b"cachenode object v1", namespace.encode(), key.encode("utf-8", "surrogatepass")):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return h.hexdigest()
