"""Triton's remote kernel cache over cluster objects: TRITON_REMOTE_CACHE_BACKEND=cachenode.client.triton_cache:CachenodeTritonCache."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from typing import Dict, List

from cachenode.env import read_env
from cachenode.errors import Forbidden, PeerUnavailable

from .compile_artifacts import signing_key
from .compile_cache import DEFAULT_NAMESPACE
from .objects import ObjectClient

try:
    from triton.runtime.cache import RemoteCacheBackend
except ImportError:  # no Triton (CPU torch wheels ship none): the class still exists for tests and docs
    class RemoteCacheBackend:  # type: ignore[no-redef]
        """Triton's base class, by name: Triton checks that "RemoteCacheBackend" is in the MRO."""

        def __init__(self, key: str) -> None:
            pass

log = logging.getLogger("cachenode.triton_cache")
_MAC_LEN = 32  # sha256


class CachenodeTritonCache(RemoteCacheBackend):
    """Triton's `RemoteCacheBackend`: `get(filenames) -> {filename: bytes}` (hits only) and
    `put(filename, data)`, over the objects `triton/<kernel key>/<filename>` of the compile namespace.

    Triton builds one backend per kernel with nothing but the kernel's key (a hash Triton makes of
    the source, options, target GPU and its own version: identity is Triton's, computed, not ours
    to type), so the rest comes from the environment: CACHENODE_NODES, CACHENODE_TOKEN,
    CACHENODE_COMPILE_NAMESPACE and CACHENODE_WRITER_TOKEN. Every object is
    HMAC(writer credential) + bytes: a value without our signature is a miss, never a kernel.
    Set TRITON_CACHE_MANAGER=triton.runtime.cache:RemoteCacheManager too: that manager is what
    calls this backend. The cluster not answering is a miss (one log line per process).
    """

    # One object client per process and (nodes, token, namespace, writer): Triton constructs a
    # backend per kernel and never closes it, so a client (an I/O thread and its connections) per
    # backend would leak hundreds. Class-level because Triton gives no other place to share it.
    _clients: Dict[tuple, ObjectClient] = {}
    _lock = threading.Lock()
    _warned: set = set()

    def __init__(self, key: str, *, client: ObjectClient | None = None, writer_token: str | None = None,
                 namespace: str | None = None) -> None:
        super().__init__(key)
        env = read_env()
        self.key = key
        self.namespace = namespace or env.compile_namespace or DEFAULT_NAMESPACE
        self._secret = writer_token or env.writer_token
        self._client = client or self._shared_client(env.nodes, env.token, self.namespace, self._secret)

    @classmethod
    def _shared_client(cls, nodes, token, namespace, writer) -> ObjectClient:
        with cls._lock:
            k = (tuple(nodes), token, namespace, writer)
            if k not in cls._clients:
                cls._clients[k] = ObjectClient(list(nodes) or None, token, namespace=namespace, writer_token=writer)
            return cls._clients[k]

    def _object(self, filename: str) -> str:
        return f"triton/{self.key}/{filename}"

    def _mac(self, obj: str, data: bytes | memoryview) -> bytes:
        m = hmac.new(signing_key(self.namespace, self._secret), obj.encode() + b"\0", hashlib.sha256)
        m.update(data)
        return m.digest()

    def _warn_once(self, what: str, exc: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("triton cache: %s (%s); Triton compiles locally", what, exc)

    def get(self, filenames: List[str]) -> Dict[str, bytes]:
        """The files the cluster holds with a valid signature; a missing or unsigned one is left out."""
        if not self._secret or not filenames:
            return {}
        objs = [self._object(f) for f in filenames]
        try:
            values = self._client.get(objs)
        except PeerUnavailable as exc:
            self._warn_once("cluster did not answer", exc)
            return {}
        out: Dict[str, bytes] = {}
        for name, obj, value in zip(filenames, objs, values):
            if value is None or len(value) < _MAC_LEN:
                continue
            value = bytes(value)
            mac, data = value[:_MAC_LEN], value[_MAC_LEN:]
            if hmac.compare_digest(mac, self._mac(obj, data)):
                out[name] = data
            else:
                log.warning("triton cache: refused %s: not signed with this namespace's writer credential", obj)
        return out

    def put(self, filename: str, data: bytes) -> None:
        """Store one file (first writer wins: Triton's files for one key are deterministic)."""
        if not self._secret:
            return
        obj = self._object(filename)
        try:
            self._client.put({obj: self._mac(obj, data) + bytes(data)}, background=True)
        except (PeerUnavailable, Forbidden) as exc:
            self._warn_once("publish failed", exc)
