"""Cluster admin reads: each member's /metrics scraped and parsed, and the `cachenode status` table."""

from __future__ import annotations

import urllib.request

from cachenode.placement import Member
from cachenode.transport.wire import METRICS_PATH, bearer
from cachenode.units import format_size


def parse_metrics(text: str) -> dict[str, float]:
    """Flatten Prometheus text into {'name{labels}': value} (for status output and tests)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def scrape(node_url: str, token: str | None, timeout: float = 10.0) -> dict[str, float]:
    """Fetch and parse a node's /metrics (sync; for tools, tests and status output)."""
    req = urllib.request.Request(f"{node_url.rstrip('/')}{METRICS_PATH}", headers=bearer(token))
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return parse_metrics(r.read().decode())


def collect(members: list[Member], token: str | None) -> list[dict]:
    """One row per member: health, tier usage, hit ratio and bytes (a member that does not answer is down)."""
    rows = []
    for m in members:
        row = {"id": m.id, "url": m.url, "healthy": m.healthy}
        try:
            x = scrape(m.url, token, timeout=5)
        except OSError as exc:
            row.update(healthy=False, error=str(exc))
            rows.append(row)
            continue
        hits = x.get('cachenode_hits_total{tier="memory"}', 0) + x.get('cachenode_hits_total{tier="disk"}', 0)
        misses = x.get("cachenode_misses_total", 0)
        row.update(
            memory_used=int(x.get("cachenode_memory_used_bytes", 0)),
            memory_capacity=int(x.get("cachenode_memory_capacity_bytes", 0)),
            disk_used=int(x.get("cachenode_disk_used_bytes", 0)),
            disk_capacity=int(x.get("cachenode_disk_capacity_bytes", 0)),
            hit_ratio=hits / (hits + misses) if hits + misses else None,
            origin_bytes=int(x.get("cachenode_origin_bytes_total", 0)),
            served_bytes=int(x.get("cachenode_served_bytes_total", 0)),
        )
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    """The rows as the `cachenode status` table."""
    head = f"{'member':<22} {'health':<7} {'memory':>21} {'disk':>21} {'hits':>6} {'origin':>11} {'served':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "memory_used" not in r:
            lines.append(f"{r['id']:<22} {'down':<7} {r.get('error', '')}")
            continue
        ratio = "-" if r["hit_ratio"] is None else f"{100 * r['hit_ratio']:.0f}%"
        lines.append(
            f"{r['id']:<22} {'up' if r['healthy'] else 'down':<7} "
            f"{format_size(r['memory_used']) + ' / ' + format_size(r['memory_capacity']):>21} "
            f"{format_size(r['disk_used']) + ' / ' + format_size(r['disk_capacity']):>21} "
            f"{ratio:>6} {format_size(r['origin_bytes']):>11} {format_size(r['served_bytes']):>11}")
    return "\n".join(lines)
