"""The node's composition root: every part of a node built once, here, and injected where it is used."""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass
from typing import Callable

from ..origin import Origin, Origins
from ..store.buffers import block_buffer
from ..store.disk import DiskTier
from ..store.host_copies import HostCopies
from ..store.memory import MemoryTier
from ..store.shm import ShmBuffers
from ..transport.base import ChannelOptions
from ..transport.http_client import HttpConnector
from ..transport.registry import TCP, Registry, default_registry
from .budgets import Budgets
from .cache import BlockCache
from .config import NodeConfig
from .membership import Membership
from .metrics import NodeMetrics
from .objects import ObjectStore
from .qos import Governor
from .service import NodeService

log = logging.getLogger("cachenode.node")

# Node-to-node HTTP connections kept per peer (forwards and warm fills).
PEER_CONNECTIONS = 32


@dataclass
class NodeParts:
    """A node's parts, wired. Whoever built them starts and closes them (`start`, `close`)."""

    config: NodeConfig
    metrics: NodeMetrics
    governor: Governor
    budgets: Budgets
    memory: MemoryTier
    disk: DiskTier
    azure: Origin
    origins: Origins
    cache: BlockCache
    membership: Membership
    peers: HttpConnector
    objects: ObjectStore
    service: NodeService

    async def start(self) -> None:
        self.governor.start()
        await self.cache.start()
        await self.objects.start()
        # Health checks share the peers' HTTP session (its connection pool).
        await self.membership.start(self.peers.session)

    async def close(self) -> None:
        await self.membership.close()
        await self.peers.close()
        await self.governor.close()
        await self.cache.close()  # pending disk writes finish in here
        await self.objects.close()
        self.service.host_copies.close()
        await self.azure.close()
        await self.origins.close()


def block_buffers(config: NodeConfig, nofile: int | None = None) -> Callable[[int], bytearray | memoryview]:
    """Memfd block buffers when this host's loaders are handed blocks (--local-socket), so a
    hand-over is a descriptor of the tier's own bytes, not a copy; otherwise private memory
    placed for the copy out of it (store/buffers.py: half a page in, huge pages). One
    descriptor per buffer: as many as the memory tier holds blocks (plus fills and forwards in
    flight), but at most a quarter of the descriptor limit (connections need the rest); blocks
    past that are plain memory, copied into a memfd once when handed over."""
    if not config.local_socket:
        return block_buffer
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    blocks = config.memory_bytes // config.block_size + 64
    limit = blocks if nofile == resource.RLIM_INFINITY else min(blocks, nofile // 4)
    if limit < blocks:
        log.info("at most %d of %d cached blocks in memfds (descriptor limit %d): the others are "
                 "copied once when handed to a local loader; raise the limit (ulimit -n) to avoid that",
                 limit, blocks, nofile)
    return ShmBuffers(limit)


def build_node(config: NodeConfig, *, registry: Registry | None = None, azure: Origin | None = None,
               file: Origin | None = None, service: type[NodeService] = NodeService) -> NodeParts:
    """Every part of one node from its config. Tests may pass a registry that also holds the
    in-process transport, and inject faults with subclasses of the real origins or service.
    Nothing is started: see NodeParts.start."""
    registry = registry or default_registry()
    if azure is None:
        # Imported only when needed: the Azure SDK is slow to import, and tests may bring their own.
        from ..origin.azure import AzureOrigin

        azure = AzureOrigin(config.azure, retries=config.origin_retries, backoff=config.origin_backoff,
                            timeout=config.origin_timeout)
    metrics = NodeMetrics()
    governor = Governor(config.qos)
    # Object batches being received count against a quarter of the object memory budget.
    budgets = Budgets(config.memory_bytes, config.block_size,
                      object_puts=max(config.max_object_size, config.object_memory_bytes // 4))
    memory = MemoryTier(config.memory_bytes)
    disk = DiskTier(os.path.join(config.cache_dir, "blocks"), config.disk_bytes,
                    on_held_eviction=metrics.disk_evicted_while_held.inc)
    # One account per node: every Azure source goes to the node's own configured origin.
    origins = Origins(lambda ref: azure, file, config.file_roots())
    cache = BlockCache(config, memory=memory, disk=disk, origins=origins, governor=governor, budgets=budgets,
                       metrics=metrics, buffers=block_buffers(config))
    membership = Membership(peers=config.peers, peers_file=config.peers_file, peers_dns=config.peers_dns,
                            health_interval=config.health_interval,
                            health_timeout=min(2.0, config.peer_timeout))
    # Objects have tiers of their own (own budgets, own directory): they never evict a block.
    objects = ObjectStore(MemoryTier(config.object_memory_bytes),
                          DiskTier(os.path.join(config.cache_dir, "objects"), config.object_disk_bytes)
                          if config.object_disk_bytes else None)
    metrics.object_memory_capacity.set(config.object_memory_bytes)
    metrics.object_disk_capacity.set(config.object_disk_bytes)
    # Node-to-node traffic (forwards, warm fills) goes over HTTP, through the registry.
    peers = registry.connector(TCP, ChannelOptions(token=config.token, timeout=config.peer_timeout,
                                                   connections_per_node=PEER_CONNECTIONS))
    assert isinstance(peers, HttpConnector)
    node_service = service(config=config, cache=cache, budgets=budgets, governor=governor, metrics=metrics,
                           membership=membership, peers=peers, objects=objects,
                           host_copies=HostCopies(memory))
    return NodeParts(config, metrics, governor, budgets, memory, disk, azure, origins, cache, membership,
                     peers, objects, node_service)
