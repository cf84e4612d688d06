"""The options every engine KV plug-in shares (nodes, token, namespace, writer credential) and the object client they open."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cachenode.env import Env, read_env

from ..objects import AsyncObjectClient, ObjectClient

DEFAULT_NAMESPACE = "kv"


@dataclass(frozen=True)
class KVStoreOptions:
    """Where an engine's KV chunks go. Plug-in config (vLLM `kv_connector_extra_config`, LMCache
    `adapter_params`, SGLang `extra_config`) over CACHENODE_* environment variables.

    nodes, token: the cluster (CACHENODE_NODES, CACHENODE_TOKEN). namespace: the object namespace
    (CACHENODE_KV_NAMESPACE, default "kv"). writer_token: that namespace's writer credential
    (CACHENODE_KV_WRITER_TOKEN, or `writer_token_file`); without it the plug-in only reads. Engines
    log their plug-in config (LMCache prints adapter_params): prefer the environment or a file. model_id: overrides the
    computed model fingerprint (e.g. a checkpoint's blob ETag); save/load switch either side off.
    """

    nodes: tuple[str, ...] = ()
    token: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    writer_token: str | None = None
    model_id: str | None = None
    save: bool = True
    load: bool = True

    @classmethod
    def resolve(cls, config: Mapping[str, Any] | None, env: Env | None = None) -> "KVStoreOptions":
        """Options from a plug-in's config dict, the environment filling what it leaves out.
        `nodes` may be a list or a comma-separated string (engines pass JSON or CLI strings)."""
        c = dict(config or {})
        env = env or read_env()
        nodes = c.get("nodes") or env.nodes
        if isinstance(nodes, str):
            nodes = [n.strip() for n in nodes.split(",") if n.strip()]
        return cls(
            nodes=tuple(nodes),
            token=c.get("token") or env.token,
            namespace=c.get("namespace") or env.kv_namespace or DEFAULT_NAMESPACE,
            writer_token=c.get("writer_token") or _read_secret(c.get("writer_token_file")) or env.kv_writer_token,
            model_id=c.get("model_id"),
            save=_flag(c.get("save", True)),
            load=_flag(c.get("load", True)),
        )

    def client(self) -> ObjectClient:
        """A sync object client for these options (its own I/O thread)."""
        return ObjectClient(self.nodes or None, self.token, namespace=self.namespace, writer_token=self.writer_token)

    def async_client(self) -> AsyncObjectClient:
        """An async object client for these options, bound to the loop it is first used on."""
        return AsyncObjectClient(self.nodes or None, self.token, namespace=self.namespace,
                                 writer_token=self.writer_token)

    @property
    def writes(self) -> bool:
        """Saving needs both the switch and the namespace's writer credential."""
        return self.save and bool(self.writer_token)


def _read_secret(path: str | None) -> str | None:
    """First line of a secret file (a Kubernetes secret mount), or None without a path."""
    if not path:
        return None
    with open(path) as f:
        return f.readline().strip() or None


def _flag(value: Any) -> bool:
    # Engines hand config through JSON and CLI strings: "false" must mean False.
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)
