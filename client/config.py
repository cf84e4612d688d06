"""The loader's configuration: one frozen dataclass, defaults from the environment (env module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from cachenode.blocks import DEFAULT_BLOCK_SIZE
from cachenode.credentials import AzureCredentials
from cachenode.env import Env, read_env, resolve_token
from cachenode.flags import flag
from cachenode.transport.registry import DEFAULT_PREFERENCE, parse_preference


@dataclass(frozen=True)
class ClientConfig:
    """Everything a loader needs. Nodes default to CACHENODE_NODES, the token to CACHENODE_TOKEN
    (or CACHENODE_TOKEN_FILE), origin credentials (only used in bypass) to AZURE_STORAGE_*,
    transports to CACHENODE_TRANSPORTS."""

    nodes: tuple[str, ...] = flag((), "--node", "Node URL.", env="CACHENODE_NODES")
    token: str | None = flag(None, "--token", "Cluster token.", env="CACHENODE_TOKEN")
    azure: AzureCredentials = field(default_factory=AzureCredentials)
    block_size: int = DEFAULT_BLOCK_SIZE  # only in bypass: through nodes, the node's block size
    window: int = 8          # blocks in flight per read
    readahead: int = 4       # blocks fetched ahead of small sequential reads
    peer_timeout: float = 10.0
    transports: tuple[str, ...] = DEFAULT_PREFERENCE
    # Background reads (a prefetch nobody waits for yet): nodes send them in paced pieces into
    # their links' idle capacity, so the jobs already on the links keep their bandwidth.
    background: bool = False
    # Seconds the member list a node gave is reused for later opens (one request less per
    # open); it is asked for again at once after a member fails a request.
    members_ttl: float = 10.0
    # This host's node's unix socket (the node's --local-socket): blocks come from it as memfd
    # descriptors, one copy into the reader's buffer instead of a socket's two, and the host's
    # readers share one pull of each block. Unset: every block over the network transports.
    # From CACHENODE_LOCAL_SOCKET (no CLI flag: the admin commands read no blocks).
    local_socket: str | None = None

    @classmethod
    def resolve(cls, nodes: Iterable[str] | None = None, token: str | None = None, *,
                azure: AzureCredentials | None = None, transports: Iterable[str] | str | None = None,
                env: Env | None = None, **rest) -> "ClientConfig":
        """Explicit arguments over the environment."""
        env = env or read_env()
        if transports is None:
            transports = env.transports
        return cls(
            nodes=tuple(n.rstrip("/") for n in (nodes if nodes is not None else env.nodes)),
            token=token or resolve_token(env.token, env.token_file),
            azure=azure or env.azure,
            local_socket=rest.pop("local_socket", None) or env.local_socket,
            transports=(parse_preference(transports) if isinstance(transports, str) or transports is None
                        else tuple(transports)),
            **rest,
        )
