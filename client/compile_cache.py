"""Compiled kernels from the cluster: load this identity's newest artifact set before torch.compile, publish after."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cachenode.env import read_env
from cachenode.errors import Forbidden, PeerUnavailable

from .compile_artifacts import (
    DEFAULT_CHUNK_SIZE, ArtifactRefused, Manifest, assemble, chunk_key, manifest_key, sign_manifest, signing_key, split,
    verify_manifest,
)
from .compile_identity import Identity, compute_identity
from .compile_kernels import collect, inductor_cache_dir, install, pack, unpack
from .objects import ObjectClient

log = logging.getLogger("cachenode.compile_cache")
DEFAULT_NAMESPACE = "compile"
# Publishers that lose a version claim take the winner's set in and try the next version; past
# this many lost races in one publish, leave it to the next publish (nothing is blocked or lost).
_MAX_CLAIMS = 8


@dataclass
class LoadResult:
    """What `load` did: the version loaded (None: compiled locally), its size, why not."""

    version: int | None = None
    bytes: int = 0
    artifacts: int = 0
    kernels: int = 0  # kernel libraries that came with it (g++ need not build them)
    seconds: float = 0.0
    reason: str = ""


@dataclass
class PublishResult:
    """What `publish` did: the version it claimed (None: nothing published) and why."""

    version: int | None = None
    bytes: int = 0
    chunks: int = 0
    reason: str = ""
    lost_claims: list[int] = field(default_factory=list)


def _artifact_names(info) -> set[str]:
    """Inductor's CacheInfo as "kind:key" names (kind: inductor, aot_autograd, ...)."""
    return {f"{kind}:{key}" for kind, keys in getattr(info, "artifacts", {}).items() for key in keys}


class CompileCache:
    """The artifact sets of one identity in one object namespace.

    `model` is the torch module (or a config object) whose compiled graphs are cached and
    `compile_options` the keyword arguments given to `torch.compile`: both go into the identity,
    which is computed here and never typed. `writer_token` is the namespace's writer credential
    (default CACHENODE_WRITER_TOKEN): it is what puts need, and what every set is signed and
    verified with; without it nothing is loaded or published. Other keyword arguments are the
    object client's (nodes, token, peer_timeout, ...), or pass a `client` to share one.

    `load()` before compiling, `publish()` after; or use it as a context manager (load on enter,
    publish on a clean exit), or the one-line `compile()` below.
    """

    def __init__(self, model: Any, compile_options: Mapping[str, Any] | None = None, *,
                 namespace: str | None = None, nodes=None, token: str | None = None,
                 writer_token: str | None = None, engine: str | None = None, device: str | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, client: ObjectClient | None = None,
                 **client_options) -> None:
        env = read_env()
        self.compile_options = dict(compile_options or {})
        self.identity: Identity = compute_identity(model, self.compile_options, engine=engine, device=device)
        self.namespace = namespace or env.compile_namespace or DEFAULT_NAMESPACE
        self._secret = writer_token or env.writer_token
        self.chunk_size = chunk_size
        self._owns_client = client is None
        self.client = client or ObjectClient(nodes, token, namespace=self.namespace, writer_token=self._secret,
                                             **client_options)
        # Kernel libraries written to the Inductor cache dir from now on (built or installed by this
        # process) go into what it publishes.
        self._since = time.time()
        # Set once the cluster failed to answer: the rest of this process compiles locally and
        # does not publish (one log line, not one per call).
        self.offline = False
        # Artifact names already in the cluster for this identity (loaded or published by us):
        # a publish with nothing beyond them claims no new version.
        self._known: set[str] = set()

    # -- the cluster side ----------------------------------------------------------------

    def _key(self) -> bytes:
        return signing_key(self.namespace, self._secret)

    def newest_version(self) -> int:
        """The highest version present (0: none). Versions are claimed in order 1, 2, 3, ..., so
        windows of doubling size are probed with one batch exists each until one ends in a gap."""
        start, window, newest = 1, 8, 0
        while True:
            got = self.client.exists([manifest_key(self.identity.digest, n) for n in range(start, start + window)])
            present = [start + i for i, hit in enumerate(got) if hit]
            newest = max(present, default=newest)
            if not got[-1]:
                return newest
            start, window = start + window, window * 2

    def fetch(self, version: int) -> tuple[Manifest, bytes]:
        """Version `version`'s set, verified (signature, identity, every digest) before anything
        of it is parsed by torch; ArtifactRefused otherwise."""
        key = manifest_key(self.identity.digest, version)
        (data,) = self.client.get([key])
        if data is None:
            raise ArtifactRefused(f"{key} vanished (its node left the cluster)")
        manifest = verify_manifest(data, identity=self.identity.digest, version=version,
                                   namespace=self.namespace, key=self._key())
        parts = self.client.get([chunk_key(d) for d, _ in manifest.chunks])
        return manifest, assemble(manifest, parts)

    def _unpack(self, manifest: Manifest, payload: bytes) -> tuple[bytes, int]:
        """Install the set's kernel libraries into this process's Inductor cache dir (before torch
        looks for them); torch's own blob back, and how many libraries the set held."""
        try:
            torch_blob, files = unpack(payload)
            install(inductor_cache_dir(), files)
        except (ValueError, KeyError, TypeError) as exc:  # signed, yet not a set we can read
            raise ArtifactRefused(f"v{manifest.version}: {exc}") from None
        return torch_blob, len(files)

    def _snapshot(self) -> tuple[bytes, set[str]] | None:
        """What this process would publish: torch's artifacts and the kernel libraries it built or
        installed, packed; with their names. None when it has compiled nothing."""
        import torch

        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return None
        blob, info = saved
        files = collect(inductor_cache_dir(), self._since)
        return pack(blob, files), _artifact_names(info) | {f"kernel:{rel}" for rel in files}

    def _apply(self, blob: bytes):
        """Hand a verified set's torch part to torch (its CacheInfo back)."""
        import torch

        return torch.compiler.load_cache_artifacts(blob)

    def _went_offline(self, exc: Exception) -> None:
        self.offline = True
        log.warning("compile cache: cluster did not answer (%s); compiling locally", exc)

    # -- load ------------------------------------------------------------------------------

    def load(self) -> LoadResult:
        """Fetch this identity's newest set and hand it to `torch.compiler.load_cache_artifacts`.
        Never raises for the cluster or a bad set: the result says why nothing was loaded, and
        torch compiles locally as if there were no cluster."""
        t0 = time.perf_counter()
        result = LoadResult()
        if not self._secret:
            result.reason = "no writer credential to verify sets with"
            log.warning("compile cache: %s (writer_token / CACHENODE_WRITER_TOKEN); compiling locally", result.reason)
            return result
        if self.offline:
            result.reason = "cluster offline"
            return result
        try:
            newest = self.newest_version()
            if not newest:
                result.reason = "no set published for this identity yet"
                log.info("compile cache: %s (%s)", result.reason, self.identity.describe())
                return result
            manifest, payload = self.fetch(newest)
            blob, result.kernels = self._unpack(manifest, payload)
        except PeerUnavailable as exc:
            self._went_offline(exc)
            result.reason = "cluster offline"
            return result
        except ArtifactRefused as exc:
            result.reason = f"refused: {exc}"
            log.warning("compile cache: %s; compiling locally", result.reason)
            return result
        try:
            info = self._apply(blob)
        except Exception as exc:  # signed by us yet unreadable to this torch: compile locally
            result.reason = f"torch could not load v{newest}: {exc!r}"
            log.warning("compile cache: %s; compiling locally", result.reason)
            return result
        self._known |= set(manifest.artifacts) | _artifact_names(info)
        result.version, result.bytes, result.artifacts = newest, len(payload), len(manifest.artifacts)
        result.seconds = time.perf_counter() - t0
        log.info("compile cache: loaded v%d of %s (%d artifacts, %d kernel libraries, %d bytes) in %.2f s",
                 newest, self.identity.describe(), result.artifacts, result.kernels, result.bytes, result.seconds)
        return result

    # -- publish -----------------------------------------------------------------------------

    def publish(self, *, background: bool = False) -> PublishResult:
        """Publish what this process compiled (and loaded) as the next version, if it holds
        artifacts the newest set lacks. Chunks go first (named by content), the manifest last:
        a reader that finds a version finds its chunks. Concurrent publishers never wait on each
        other: a lost claim (another writer took version n first) takes the winner's set in, so
        the next claim is the union, and tries n + 1. Never raises for the cluster."""
        result = PublishResult()
        if not self._secret:
            result.reason = "no writer credential"
            return result
        if self.offline:
            result.reason = "cluster offline"
            return result
        snapshot = self._snapshot()
        if snapshot is None:
            result.reason = "nothing compiled"
            return result
        blob, names = snapshot
        if names <= self._known:  # checked before asking the cluster: a warm restart costs no request
            result.reason = "the cluster's newest set already holds these artifacts"
            return result
        try:
            version = self.newest_version() + 1
            for _ in range(_MAX_CLAIMS):
                if names <= self._known:
                    result.reason = "the cluster's newest set already holds these artifacts"
                    return result
                chunks = split(blob, self.chunk_size)
                self.client.put(dict(chunks), background=background)  # equal chunks stored once
                key = manifest_key(self.identity.digest, version)
                manifest = sign_manifest(identity=self.identity.digest, version=version, namespace=self.namespace,
                                         blob=blob, chunks=chunks, artifacts=sorted(names), key=self._key())
                if self.client.put({key: manifest}, background=background)[key] == "stored":
                    self._known |= names
                    result.version, result.bytes, result.chunks = version, len(blob), len(chunks)
                    log.info("compile cache: published v%d of %s (%d artifacts, %d bytes, %d chunks)", version,
                             self.identity.describe(), len(names), len(blob), len(chunks))
                    return result
                result.lost_claims.append(version)
                self._take_in(version)
                blob, names = self._snapshot()
                version += 1
            result.reason = f"lost {_MAX_CLAIMS} version claims in a row"
            return result
        except PeerUnavailable as exc:
            self._went_offline(exc)
            result.reason = "cluster offline"
            return result
        except Forbidden as exc:  # a credential the nodes do not know: say so, the compile stands
            result.reason = f"refused by the nodes: {exc}"
            log.warning("compile cache: publish %s", result.reason)
            return result

    def _take_in(self, version: int) -> None:
        """Load the set another publisher won `version` with, so our next save holds its artifacts
        too (torch records loaded artifacts for the next save_cache_artifacts)."""
        try:
            manifest, payload = self.fetch(version)
            self._apply(self._unpack(manifest, payload)[0])
            self._known |= set(manifest.artifacts)
        except ArtifactRefused as exc:  # not ours to merge: publish ours over it at the next version
            log.warning("compile cache: refused v%d while merging: %s", version, exc)

    # -- use -----------------------------------------------------------------------------

    def compile(self, model: Any) -> Any:
        """`torch.compile(model, **compile_options)`: with the options the identity was computed from."""
        import torch

        return torch.compile(model, **self.compile_options)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> "CompileCache":
        self.load()
        return self

    def __exit__(self, exc_type, *rest) -> None:
        try:
            if exc_type is None:
                self.publish()
        finally:
            self.close()


class PublishingCompiled:
    """A compiled callable that publishes its cache's artifacts after its first call (compilation
    in torch.compile is lazy: nothing exists to publish before it). Later calls that compile new
    shapes publish with `publish()`; everything else is the compiled object's."""

    def __init__(self, compiled: Callable, cache: CompileCache) -> None:
        self.compiled = compiled
        self.cache = cache
        self.last_publish: PublishResult | None = None

    def __call__(self, *args, **kwargs):
        out = self.compiled(*args, **kwargs)
        if self.last_publish is None:
            self.last_publish = self.cache.publish()
        return out

    def publish(self) -> PublishResult:
        self.last_publish = self.cache.publish()
        return self.last_publish

    def __getattr__(self, name: str):
        return getattr(self.compiled, name)


def compile(model: Any, *, namespace: str | None = None, nodes=None, token: str | None = None,
            writer_token: str | None = None, engine: str | None = None, client: ObjectClient | None = None,
            **compile_options) -> PublishingCompiled:
    """The one-line call: `torch.compile(model, **compile_options)` with this identity's newest
    artifacts loaded first and this process's artifacts published after the first call."""
    cache = CompileCache(model, compile_options, namespace=namespace, nodes=nodes, token=token,
                         writer_token=writer_token, engine=engine, client=client)
    cache.load()
    return PublishingCompiled(cache.compile(model), cache)
