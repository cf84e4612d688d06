"""Small shared test helpers (imported by tests; fixtures live in conftest.py)."""

from __future__ import annotations

from cachenode.bench.services import NodeProcess
from cachenode.node.metrics import scrape

TOKEN = "test-cluster-token"
KiB, MiB = 1024, 1024 * 1024
BS = 64 * KiB  # small blocks keep multi-block tests fast


def metrics(node: NodeProcess, token: str = TOKEN) -> dict[str, float]:
    return scrape(node.url, token)


def metric(node: NodeProcess, name: str, token: str = TOKEN) -> float:
    return metrics(node, token).get(name, 0.0)
