"""A signed, chunked artifact set: object keys, manifest format, HMAC signing and verification."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Sequence

from cachenode.errors import CacheError

MANIFEST_FORMAT = 2  # 2: the set is torch's blob and kernel libraries (compile_kernels.pack)
DEFAULT_CHUNK_SIZE = 4 * 1024**2  # under the nodes' default --max-object-size (64 MiB) and one batch
_SIG_PREFIX = b"\nhmac-sha256="
# A label of its own for the signing key, so the writer credential's HMAC here can never be
# mistaken for (or replayed as) any other use of the same secret.
_KEY_LABEL = b"cachenode compile artifacts v1"


class ArtifactRefused(CacheError, ValueError):
    """An artifact set that must not be loaded: unsigned, signed with another key, of another
    identity, version or namespace, truncated, or with a chunk whose digest does not match."""


def manifest_key(identity: str, version: int) -> str:
    """Version n of an identity's set; claimed with a put (first writer wins), found with exists."""
    return f"compile/{identity}/v{version}"


def chunk_key(digest: str) -> str:
    """A chunk is named by its content (sha256): two publishers of the same bytes share it."""
    return f"compile/chunk/{digest}"


def signing_key(namespace: str, secret: str) -> bytes:
    """The HMAC key derived from the namespace's writer credential (bound to the namespace)."""
    return hmac.new(secret.encode(), _KEY_LABEL + b"\0" + namespace.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Manifest:
    """What a manifest object says: the set's identity and version, its whole size and sha256,
    its chunks in order (sha256, length), and the artifact keys it carries (Inductor's own names,
    so a publisher can tell whether it has anything new)."""

    identity: str
    version: int
    namespace: str
    size: int
    sha256: str
    chunks: tuple[tuple[str, int], ...]
    artifacts: tuple[str, ...]


def split(blob: bytes | memoryview, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[tuple[str, memoryview]]:
    """(chunk key, bytes) in order, each at most `chunk_size` (under the nodes' object size limit).
    A list, not a mapping: equal chunks (runs of zeros) share a key but each keeps its place."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    view = memoryview(blob)
    return [(chunk_key(hashlib.sha256(view[off:off + chunk_size]).hexdigest()), view[off:off + chunk_size])
            for off in range(0, len(view), chunk_size)]


def sign_manifest(*, identity: str, version: int, namespace: str, blob: bytes | memoryview,
                  chunks: Sequence[tuple[str, memoryview]], artifacts: Sequence[str], key: bytes) -> bytes:
    """The manifest object: canonical JSON, then the HMAC of exactly those bytes."""
    body = json.dumps({
        "format": MANIFEST_FORMAT, "identity": identity, "version": version, "namespace": namespace,
        "size": len(memoryview(blob)), "sha256": hashlib.sha256(blob).hexdigest(),
        "chunks": [[k.rsplit("/", 1)[1], len(v)] for k, v in chunks],
        "artifacts": sorted(artifacts),
    }, sort_keys=True, separators=(",", ":")).encode()
    return body + _SIG_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def verify_manifest(data: bytes | memoryview, *, identity: str, version: int, namespace: str,
                    key: bytes) -> Manifest:
    """The manifest if its signature is ours and it is for this identity, version and namespace;
    ArtifactRefused otherwise. The signature is checked before anything else is parsed."""
    data = bytes(data)
    body, sep, sig = data.rpartition(_SIG_PREFIX)
    if not sep:
        raise ArtifactRefused(f"{manifest_key(identity, version)} is unsigned")
    want = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(sig, want):
        raise ArtifactRefused(f"{manifest_key(identity, version)} is not signed with this namespace's "
                              f"writer credential (or was altered)")
    try:
        m = json.loads(body)
        manifest = Manifest(identity=m["identity"], version=int(m["version"]), namespace=m["namespace"],
                            size=int(m["size"]), sha256=m["sha256"],
                            chunks=tuple((str(d), int(n)) for d, n in m["chunks"]),
                            artifacts=tuple(m["artifacts"]))
        fmt = m["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactRefused(f"{manifest_key(identity, version)}: malformed manifest ({exc})") from None
    if fmt != MANIFEST_FORMAT:
        raise ArtifactRefused(f"{manifest_key(identity, version)}: manifest format {fmt}, expected {MANIFEST_FORMAT}")
    # Signed but for something else: a validly signed manifest copied under another key is foreign.
    if (manifest.identity, manifest.version, manifest.namespace) != (identity, version, namespace):
        raise ArtifactRefused(f"{manifest_key(identity, version)} holds the set of identity "
                              f"{manifest.identity[:16]} v{manifest.version} in {manifest.namespace!r}: foreign")
    if sum(n for _, n in manifest.chunks) != manifest.size:
        raise ArtifactRefused(f"{manifest_key(identity, version)}: chunk lengths do not add up to its size")
    return manifest


def assemble(manifest: Manifest, parts: Sequence[bytes | memoryview | None]) -> bytes:
    """The whole set from its chunks (in manifest order), every chunk and the whole checked
    against the signed digests; ArtifactRefused on a missing, short or altered chunk."""
    out = bytearray()
    for (digest, length), part in zip(manifest.chunks, parts, strict=True):
        if part is None:
            raise ArtifactRefused(f"chunk {digest[:16]} of v{manifest.version} is missing")
        if len(part) != length or hashlib.sha256(part).hexdigest() != digest:
            raise ArtifactRefused(f"chunk {digest[:16]} of v{manifest.version} is truncated or altered")
        out += part
    if len(out) != manifest.size or hashlib.sha256(out).hexdigest() != manifest.sha256:
        raise ArtifactRefused(f"v{manifest.version}: the set does not match its signed digest")
    return bytes(out)
