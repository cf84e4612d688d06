"""Small shared test helpers (imported by tests; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

from cachenode.client.admin import scrape
from cachenode.testing.node import NodeProcess

TOKEN = "test-cluster-token"
KiB, MiB = 1024, 1024 * 1024
BS = 64 * KiB  # small blocks keep multi-block tests fast


def metrics(node: NodeProcess, token: str = TOKEN) -> dict[str, float]:
    return scrape(node.url, token)


def metric(node: NodeProcess, name: str, token: str = TOKEN) -> float:
    return metrics(node, token).get(name, 0.0)


def http_get(url: str, token: str | None = TOKEN, headers: dict | None = None,
             timeout: float = 30) -> tuple[int, dict | bytes]:
    """GET a node endpoint with the cluster token: (status, the JSON body, or raw bytes if not JSON)."""
    req = urllib.request.Request(url, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def cachebench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `cachebench ARGS` in a fresh process; its output captured."""
    return subprocess.run([sys.executable, "-m", "cachenode.bench.cli", *args], capture_output=True,
                          text=True, timeout=timeout)
