"""Per-node Prometheus counters (one registry per node, so many nodes can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class NodeMetrics:
    """The counters groupcache taught us to keep first-class, in Prometheus form."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.hits = Counter("cachenode_hits", "Block requests answered from the cache", ["tier"], registry=r)
        self.misses = Counter("cachenode_misses", "Block requests not in any tier", registry=r)
        self.fills = Counter("cachenode_fills", "Blocks read from the origin", registry=r)
        self.fills_deduplicated = Counter(
            "cachenode_fills_deduplicated", "Requests that waited on a fill already running", registry=r)
        self.origin_bytes = Counter("cachenode_origin_bytes", "Bytes read from the origin", registry=r)
        self.served_bytes = Counter("cachenode_served_bytes", "Block bytes sent to clients", registry=r)
        self.served_blocks = Counter("cachenode_served_blocks", "Blocks sent to clients", ["tier"], registry=r)
        self.corrupt_blocks = Counter(
            "cachenode_corrupt_blocks", "Cached blocks whose digest did not match (dropped)", registry=r)
        self.disk_full = Counter("cachenode_disk_full", "Blocks not cached because the disk was full", registry=r)
        self.disk_evicted_while_held = Counter(
            "cachenode_disk_evicted_while_held", "Block files evicted while a send still held them open "
            "(their bytes count against --disk until the send ends)", registry=r)
        self.disk_held_evicted = Gauge("cachenode_disk_held_evicted_bytes",
                                       "Bytes of evicted block files still open for a send", registry=r)
        self.ucx_requests = Counter("cachenode_ucx_requests", "Block requests received over UCX", registry=r)
        self.forwarded = Counter("cachenode_forwarded", "Block requests forwarded to their owner", registry=r)
        self.warm_blocks = Counter("cachenode_warm_blocks", "Blocks filled by warm requests", ["result"], registry=r)
        self.qos_limit = Gauge("cachenode_qos_background_limit_bytes_per_second",
                               "Current pace of background traffic (rx: warm fills, tx: background "
                               "reads); -1 = unlimited", ["direction"], registry=r)
        self.qos_other = Gauge("cachenode_qos_other_traffic_bytes_per_second",
                               "Traffic on the watched link that is not the cache's", ["direction"], registry=r)
        self.qos_bytes = Gauge("cachenode_qos_bytes", "Cache bytes by traffic class", ["class"], registry=r)
        self.qos_throttled = Gauge("cachenode_qos_throttled_seconds", "Time spent waiting for bandwidth", registry=r)
        self.errors = Counter("cachenode_errors", "Requests that failed", ["kind"], registry=r)
        self.stale_stats = Counter("cachenode_stale_stats", "Stats answered from memory while the origin was "
                                   "unreachable", registry=r)
        self.connections_shed = Counter(
            "cachenode_connections_shed", "Silent connections closed at the connection cap to admit new ones",
            registry=r)
        self.client_disconnects = Counter("cachenode_client_disconnects", "Clients that hung up mid-response",
                                          registry=r)
        self.memory_used = Gauge("cachenode_memory_used_bytes", "Bytes in the memory tier", registry=r)
        self.memory_capacity = Gauge("cachenode_memory_capacity_bytes", "Memory tier budget", registry=r)
        self.disk_used = Gauge("cachenode_disk_used_bytes", "Bytes in the disk tier", registry=r)
        self.disk_capacity = Gauge("cachenode_disk_capacity_bytes", "Disk tier budget", registry=r)
        # Objects without origin, per namespace (the allow-list bounds the label's values).
        self.object_requests = Counter("cachenode_object_requests", "Object keys asked for, by namespace, "
                                       "operation and result", ["namespace", "op", "result"], registry=r)
        self.object_bytes = Counter("cachenode_object_bytes", "Object bytes received (put) and sent (get), "
                                    "by namespace", ["namespace", "direction"], registry=r)
        self.object_memory_used = Gauge("cachenode_object_memory_used_bytes", "Bytes of objects in memory",
                                        registry=r)
        self.object_memory_capacity = Gauge("cachenode_object_memory_capacity_bytes", "Object memory budget",
                                            registry=r)
        self.object_disk_used = Gauge("cachenode_object_disk_used_bytes", "Bytes of objects on disk", registry=r)
        self.object_disk_capacity = Gauge("cachenode_object_disk_capacity_bytes", "Object disk budget",
                                          registry=r)
        for tier in ("memory", "disk"):  # export zeros from the start, so rates work at once
            self.hits.labels(tier)
        for tier in ("memory", "disk", "origin"):
            self.served_blocks.labels(tier)

    def render(self) -> bytes:
        return generate_latest(self.registry)
