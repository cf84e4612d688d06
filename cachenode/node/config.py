"""The node's configuration: one frozen dataclass, plus the allow-list check it implies."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

from ..blocks import DEFAULT_BLOCK_SIZE
from ..credentials import AzureCredentials
from ..source import AZURE, FILE, SourceRef
from .qos import QosConfig

GiB = 1024**3


@dataclass(frozen=True)
class NodeConfig:
    """Everything a cache node needs; click options and env vars map onto these fields."""

    host: str = "127.0.0.1"
    port: int = 8470
    cache_dir: str = os.path.expanduser("~/.cache/cachenode")
    memory_bytes: int = 2 * GiB
    disk_bytes: int = 50 * GiB
    block_size: int = DEFAULT_BLOCK_SIZE
    # "account/container", "account/*" or "file:///dir/"; empty = every container of the
    # configured account (the only account a node holds credentials for) and no local files.
    allow: tuple[str, ...] = ()
    token: str | None = None
    # Secret of node-to-node (forwarded) requests; derived from the cluster token if not given.
    # Give it only to nodes (not loaders) to keep loaders from claiming node traffic at all.
    node_token: str | None = None
    azure: AzureCredentials = field(default_factory=AzureCredentials)
    origin_retries: int = 4
    origin_backoff: float = 0.25
    # Seconds one origin call (stat, list, a block's read, retries included) may take: below
    # the loaders' peer timeout, so a hung origin is reported by name, not as a silent node.
    origin_timeout: float = 8.0
    # While the origin is unreachable, a stat answered from memory if at most this old (s):
    # a warm cluster keeps serving what it holds through a short outage. 0 turns it off.
    stale_stat: float = 600.0
    # Cluster: members as URL or ID=URL entries, a file of them (re-read on change), or a DNS
    # name:port whose A/AAAA records are the members. member_id defaults to host:port.
    peers: tuple[str, ...] = ()
    peers_file: str | None = None
    peers_dns: str | None = None
    member_id: str | None = None
    advertise_url: str | None = None
    peer_timeout: float = 10.0
    health_interval: float = 1.0
    # Connections: at most this many open at once (more are closed on accept), and one that
    # sends no complete request for `idle_timeout` seconds (new or kept alive) is closed, so
    # clients that connect and send nothing cannot use up the node's descriptors.
    max_connections: int = 512
    idle_timeout: float = 30.0
    warm_concurrency: int = 4
    ucx: bool = False  # also serve blocks over UCX (needs the `ucx` extra)
    qos: QosConfig = field(default_factory=QosConfig)

    def forward_secret(self) -> str:
        """What a node sends to mark a request as forwarded by a node ("" without auth).

        An HMAC of the cluster token under its own label, so the value a loader sends as its
        bearer token never doubles as the node marker.
        """
        if self.node_token:
            return self.node_token
        if not self.token:
            return ""
        return hmac.new(self.token.encode(), b"cachenode node-to-node v1", hashlib.sha256).hexdigest()

    def file_roots(self) -> tuple[str, ...]:
        """The local directories `file://` allow entries name (the file origin's roots)."""
        return tuple(os.path.normpath(a[len("file://"):]) for a in self.allow if a.startswith("file://"))

    def allows(self, ref: SourceRef) -> bool:
        """True if this node may read `ref` from its origin on a client's behalf."""
        if ref.kind == FILE:
            # Lexical here (the path is canonical); the file origin checks links where it opens.
            return any(ref.path == root or ref.path.startswith(root.rstrip("/") + "/")
                       for root in self.file_roots())
        if ref.kind != AZURE:
            return False
        azure_entries = [a for a in self.allow if not a.startswith("file://")]
        if not azure_entries:
            return ref.account == self.azure.account
        for entry in azure_entries:
            account, _, container = entry.partition("/")
            if account == ref.account and container in ("*", ref.container):
                return True
        return False
