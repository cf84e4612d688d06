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
    """Everything a cache node needs; `cachenode serve`'s options are made from these fields
    (cachenode/options.py), and env vars stand in for some of them (cachenode/env.py)."""

    host: str = field(default="127.0.0.1", metadata={
        "option": "--host",
        "help": "Address to listen on. Binding beyond loopback requires a cluster token."})
    port: int = field(default=8470, metadata={"option": "--port", "help": "Port; 0 picks a free one."})
    cache_dir: str = field(default=os.path.expanduser("~/.cache/cachenode"), metadata={
        "option": "--cache-dir", "kind": "dir", "env": "CACHENODE_CACHE_DIR", "help": "Disk tier directory."})
    memory_bytes: int = field(default=2 * GiB, metadata={
        "option": "--memory", "kind": "size", "help": "Memory tier budget."})
    disk_bytes: int = field(default=50 * GiB, metadata={
        "option": "--disk", "kind": "size", "help": "Disk tier budget."})
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={
        "option": "--block-size", "kind": "size",
        "help": "Block size; every node and loader of a cluster uses the node's."})
    allow: tuple[str, ...] = field(default=(), metadata={
        "option": "--allow", "metavar": "ACCOUNT/CONTAINER",
        "help": "Sources this node serves: account/container, account/*, or file:///dir. Repeatable. "
                "Default: every container of the configured account, no local files."})
    token: str | None = field(default=None, metadata={
        "option": "--token", "env": "CACHENODE_TOKEN", "help": "Cluster token clients must send."})
    # Secret of node-to-node (forwarded) requests; derived from the cluster token if not given.
    # Give it only to nodes (not loaders) to keep loaders from claiming node traffic at all.
    node_token: str | None = field(default=None, metadata={
        "option": "--node-token", "env": "CACHENODE_NODE_TOKEN", "default_text": "derived from the cluster token",
        "help": "Secret for node-to-node (forwarded) requests; give it to nodes only."})
    azure: AzureCredentials = field(default_factory=AzureCredentials, metadata={"nested": True})
    origin_retries: int = field(default=4, metadata={
        "option": "--origin-retries", "range": (0, 20),
        "help": "Retries (with exponential backoff) on origin 5xx, throttling and connection errors."})
    origin_backoff: float = 0.25
    stale_stat: float = field(default=600.0, metadata={
        "option": "--stale-stat", "range": (0, 86400),
        "help": "While the origin is unreachable, answer a file's stat from memory if at most this "
                "many seconds old, so cached blocks stay readable through a short outage (0: off)."})
    # Covers stat, list and a block's read: below the loaders' peer timeout, so a hung origin is
    # reported by name, not as a silent node.
    origin_timeout: float = field(default=8.0, metadata={
        "option": "--origin-timeout", "range": (0.1, 3600),
        "help": "Seconds one origin call (retries included) may take before the request fails "
                "naming the origin; keep it below the loaders' peer timeout (10 s)."})
    peers: tuple[str, ...] = field(default=(), metadata={
        "option": "--peers", "metavar": "URL[,URL...]",
        "help": "Cluster members: http://host:port or ID=http://host:port, comma-separated or repeated."})
    peers_file: str | None = field(default=None, metadata={
        "option": "--peers-file", "kind": "file",
        "help": "File with one member per line; re-read when it changes."})
    peers_dns: str | None = field(default=None, metadata={
        "option": "--peers-dns", "metavar": "NAME:PORT",
        "help": "DNS name whose A/AAAA records are the members (Kubernetes headless Service); "
                "re-resolved every few seconds."})
    member_id: str | None = field(default=None, metadata={
        "option": "--member-id", "default_text": "host:port it is reached at",
        "help": "This node's stable id in the cluster."})
    advertise_url: str | None = field(default=None, metadata={
        "option": "--advertise-url", "default_text": "the listen address",
        "help": "URL other members use for this node."})
    ucx: bool = field(default=False, metadata={
        "option": "--ucx",
        "help": "Also serve blocks over UCX (RDMA/InfiniBand, shared memory; pip install cachenode[ucx]). "
                "UCX_TLS, UCX_NET_DEVICES etc. pass through to UCX."})
    qos: QosConfig = field(default_factory=QosConfig, metadata={"nested": True})
    peer_timeout: float = field(default=10.0, metadata={
        "option": "--peer-timeout",
        "help": "Seconds without progress before a peer transfer is abandoned for the next candidate."})
    health_interval: float = 1.0
    # Clients that connect and send nothing cannot use up the node's descriptors.
    max_connections: int = field(default=512, metadata={
        "option": "--max-connections", "range": (1, 65535),
        "help": "Open HTTP connections at most (lowered to fit the descriptor limit); when full, the "
                "longest-silent connection without a request in progress is closed for a new one."})
    idle_timeout: float = field(default=30.0, metadata={
        "option": "--idle-timeout", "range": (0.1, 3600),
        "help": "Seconds a connection may stay without a complete request (new or kept alive)."})
    warm_concurrency: int = 4

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
