"""Layering: the loader does not load the daemon, and transport does not import the node."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What importing the loader must not pull in (the bypass imports Azure only when it runs).
DAEMON_ONLY = ["cachenode.node", "cachenode.node.service", "cachenode.node.cache", "cachenode.node.qos",
               "cachenode.node.membership", "cachenode.node.daemon", "cachenode.node.metrics",
               "cachenode.store", "cachenode.store.disk", "cachenode.store.memory", "cachenode.warming",
               "cachenode.origin.azure", "prometheus_client", "azure.storage.blob", "azure.identity"]


def test_importing_the_loader_loads_no_daemon_module():
    code = ("import sys, cachenode, cachenode.client, cachenode.client.api, cachenode.torch\n"
            f"print([m for m in {DAEMON_ONLY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside cachenode.transport
                base = "cachenode.transport" + (f".{base}" if base else "")
                if node.level > 1:
                    base = "cachenode" + (f".{node.module}" if node.module else "")
            names.add(base)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_transport_imports_only_core_types():
    core = {"cachenode.blocks", "cachenode.errors", "cachenode.source", "cachenode.placement"}
    for path in sorted((ROOT / "transport").glob("*.py")):
        ours = {n for n in _imports(path) if n.startswith("cachenode") and not n.startswith("cachenode.transport")}
        assert ours <= core, f"{path.name} imports {sorted(ours - core)}"


# bench's own tests: they measure through `cachebench` and may import its modules
BENCH_TESTS = {"test_bench.py", "test_simulate.py", "test_soak.py", "test_quickstart.py"}


def test_the_harness_needs_neither_pytest_nor_the_benchmarks():
    """`cachenode.testing` ships in the wheel: it imports no pytest and nothing of `cachenode.bench`;
    among the tests only bench's own import `cachenode.bench`."""
    for path in sorted((ROOT / "cachenode" / "testing").glob("*.py")):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("pytest", "_pytest") or n.startswith("cachenode.bench")}
        assert not bad, f"cachenode/testing/{path.name} imports {sorted(bad)}"
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name not in BENCH_TESTS:
            bad = {n for n in _imports(path) if n.startswith("cachenode.bench")}
            assert not bad, f"tests/{path.name} imports {sorted(bad)}"
