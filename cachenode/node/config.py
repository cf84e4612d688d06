"""The node's configuration: one frozen dataclass, plus the allow-list check it implies."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from ..blocks import DEFAULT_BLOCK_SIZE
from ..credentials import AzureCredentials
from ..flags import flag, nested
from ..source import AZURE, FILE, SourceRef
from .qos import QosConfig

GiB = 1024**3


@dataclass(frozen=True)
class NodeConfig:
    """Everything a cache node needs; `cachenode serve`'s options are made from these fields
    (cachenode/flags.py), and env vars stand in for some of them (cachenode/env.py)."""

    host: str = flag("127.0.0.1", "--host", "Address to listen on. Binding beyond loopback requires a cluster token.")
    port: int = flag(8470, "--port", "Port; 0 picks a free one.")
    cache_dir: str = flag(os.path.expanduser("~/.cache/cachenode"), "--cache-dir", "Disk tier directory.",
                          kind="dir", env="CACHENODE_CACHE_DIR")
    memory_bytes: int = flag(2 * GiB, "--memory", "Memory tier budget.", kind="size")
    disk_bytes: int = flag(50 * GiB, "--disk", "Disk tier budget.", kind="size")
    block_size: int = flag(DEFAULT_BLOCK_SIZE, "--block-size", "Block size; every node and loader of a cluster "
                           "uses the node's.", kind="size")
    allow: tuple[str, ...] = flag((), "--allow", "Sources this node serves: account/container, account/*, or "
                                  "file:///dir. Repeatable. Default: every container of the configured account, "
                                  "no local files.", metavar="ACCOUNT/CONTAINER")
    token: str | None = flag(None, "--token", "Cluster token clients must send.", env="CACHENODE_TOKEN")
    # Give it only to nodes (not loaders) to keep loaders from claiming node traffic at all.
    node_token: str | None = flag(None, "--node-token", "Secret for node-to-node (forwarded) requests; give it to "
                                  "nodes only.", env="CACHENODE_NODE_TOKEN",
                                  default_text="derived from the cluster token")
    azure: AzureCredentials = nested(AzureCredentials)
    origin_retries: int = flag(4, "--origin-retries", "Retries (with exponential backoff) on origin 5xx, "
                               "throttling and connection errors.", range=(0, 20))
    origin_backoff: float = 0.25
    stale_stat: float = flag(600.0, "--stale-stat", "While the origin is unreachable, answer a file's stat from "
                             "memory if at most this many seconds old, so cached blocks stay readable through a "
                             "short outage (0: off).", range=(0, 86400))
    # Covers stat, list and a block's read: below the loaders' peer timeout, so a hung origin is
    # reported by name, not as a silent node.
    origin_timeout: float = flag(8.0, "--origin-timeout", "Seconds one origin call (retries included) may take "
                                 "before the request fails naming the origin; keep it below the loaders' peer "
                                 "timeout (10 s).", range=(0.1, 3600))
    peers: tuple[str, ...] = flag((), "--peers", "Cluster members: http://host:port or ID=http://host:port, "
                                  "comma-separated or repeated.", metavar="URL[,URL...]")
    peers_file: str | None = flag(None, "--peers-file", "File with one member per line; re-read when it changes.",
                                  kind="file")
    peers_dns: str | None = flag(None, "--peers-dns", "DNS name whose A/AAAA records are the members (Kubernetes "
                                 "headless Service); re-resolved every few seconds.", metavar="NAME:PORT")
    member_id: str | None = flag(None, "--member-id", "This node's stable id in the cluster.",
                                 default_text="host:port it is reached at")
    advertise_url: str | None = flag(None, "--advertise-url", "URL other members use for this node.",
                                     default_text="the listen address")
    ucx: bool = flag(False, "--ucx", "Also serve blocks over UCX (RDMA/InfiniBand, shared memory; pip install "
                     "cachenode[ucx]). UCX_TLS, UCX_NET_DEVICES etc. pass through to UCX.")
    local_socket: str | None = flag(None, "--local-socket", "Also hand blocks to loaders on this host over a "
                                    "unix socket at PATH, relative to --cache-dir unless absolute (a memfd per "
                                    "block; loaders set CACHENODE_LOCAL_SOCKET to it).",
                                    metavar="PATH")
    qos: QosConfig = nested(QosConfig)
    peer_timeout: float = flag(10.0, "--peer-timeout", "Seconds without progress before a peer transfer is "
                               "abandoned for the next candidate.")
    health_interval: float = 1.0
    # Clients that connect and send nothing cannot use up the node's descriptors.
    max_connections: int = flag(512, "--max-connections", "Open HTTP connections at most (lowered to fit the "
                                "descriptor limit); when full, the longest-silent connection without a request in "
                                "progress is closed for a new one.", range=(1, 65535))
    idle_timeout: float = flag(30.0, "--idle-timeout", "Seconds a connection may stay without a complete request "
                               "(new or kept alive).", range=(0.1, 3600))
    warm_concurrency: int = 4
    # Objects without origin (KV caches, compile artifacts): tiers and budgets of their own, so a
    # flood of objects never evicts a checkpoint block; off until a namespace is allowed.
    namespaces: tuple[str, ...] = flag((), "--namespace", "Object namespace this node stores and serves "
                                       "(repeatable). Default: none, objects off.", metavar="NAME")
    writer_tokens: tuple[str, ...] = flag((), "--writer-token", "Writer credential of a namespace: puts and "
                                          "deletes need it, the cluster token alone cannot write (repeatable).",
                                          metavar="NAME=TOKEN")
    writer_token_file: str | None = flag(None, "--writer-token-file", "File of NAME=TOKEN lines, one writer "
                                         "credential per namespace.", kind="file")
    object_memory_bytes: int = flag(1 * GiB, "--object-memory", "Memory budget of objects (apart from blocks).",
                                    kind="size")
    object_disk_bytes: int = flag(10 * GiB, "--object-disk", "Disk budget of objects (apart from blocks; 0: "
                                  "memory only).", kind="size")
    max_object_size: int = flag(64 * 1024**2, "--max-object-size", "Largest object a put may store.", kind="size")

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

    def writers(self) -> dict[str, str]:
        """namespace -> writer credential, from --writer-token and --writer-token-file (the file's
        lines win); ValueError names a malformed entry, never its secret."""
        entries = list(self.writer_tokens)
        if self.writer_token_file:
            with open(self.writer_token_file) as f:
                entries += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        out: dict[str, str] = {}
        for entry in entries:
            name, sep, token = entry.partition("=")
            if not sep or not name.strip() or not token.strip():
                raise ValueError(f"writer token entry for {name.strip()[:40]!r}: expected NAME=TOKEN")
            out[name.strip()] = token.strip()
        return out

    def local_socket_path(self) -> str | None:
        """--local-socket as a path: a relative one lives in the cache directory (a hostPath
        volume on Kubernetes, which the loaders' pods mount too)."""
        if not self.local_socket:
            return None
        return os.path.join(self.cache_dir, self.local_socket)

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
