"""Every environment variable cachenode reads, read in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .credentials import AzureCredentials


@dataclass(frozen=True)
class Env:
    """Settings taken from the environment (flags override them)."""

    token: str | None
    token_file: str | None
    nodes: tuple[str, ...]
    cache_dir: str | None
    azure: AzureCredentials
    transports: str | None = None  # loader preference, e.g. "ucx,tcp"
    node_token: str | None = None  # node-to-node secret (nodes only)
    kv_namespace: str | None = None  # engine KV plug-ins: the object namespace of KV chunks
    kv_writer_token: str | None = None  # engine KV plug-ins: that namespace's writer credential
    writer_token: str | None = None  # an object namespace's writer credential (publishers, verifiers)
    compile_namespace: str | None = None  # the object namespace compiled artifacts live in
    local_socket: str | None = None  # this host's node's unix socket (loaders on the same host)


def read_env(environ: Mapping[str, str] | None = None) -> Env:
    """CACHENODE_* for cachenode itself, AZURE_STORAGE_* as the Azure tools spell them."""
    e = os.environ if environ is None else environ
    nodes = tuple(n.strip() for n in e.get("CACHENODE_NODES", "").split(",") if n.strip())
    azure = AzureCredentials(
        connection_string=e.get("AZURE_STORAGE_CONNECTION_STRING") or None,
        account_name=e.get("AZURE_STORAGE_ACCOUNT_NAME") or e.get("AZURE_STORAGE_ACCOUNT") or None,
        account_key=e.get("AZURE_STORAGE_ACCOUNT_KEY") or e.get("AZURE_STORAGE_KEY") or None,
        sas_token=e.get("AZURE_STORAGE_SAS_TOKEN") or None,
        endpoint=e.get("AZURE_STORAGE_BLOB_ENDPOINT") or None,
    )
    return Env(
        token=e.get("CACHENODE_TOKEN") or None,
        token_file=e.get("CACHENODE_TOKEN_FILE") or None,
        nodes=nodes,
        cache_dir=e.get("CACHENODE_CACHE_DIR") or None,
        azure=azure,
        transports=e.get("CACHENODE_TRANSPORTS") or None,
        node_token=e.get("CACHENODE_NODE_TOKEN") or None,
        kv_namespace=e.get("CACHENODE_KV_NAMESPACE") or None,
        kv_writer_token=e.get("CACHENODE_KV_WRITER_TOKEN") or None,
        writer_token=e.get("CACHENODE_WRITER_TOKEN") or None,
        compile_namespace=e.get("CACHENODE_COMPILE_NAMESPACE") or None,
        local_socket=e.get("CACHENODE_LOCAL_SOCKET") or None,
    )


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The cluster token: given directly, or the first line of a file (Kubernetes secret mount)."""
    if token:
        return token.strip()
    if token_file:
        try:
            text = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not text:
            raise ValueError(f"token file {token_file} is empty")
        return text
    return None
