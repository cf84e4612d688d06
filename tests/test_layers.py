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


def _imports(path: Path, package: str = "cachenode.transport") -> set[str]:
    """Absolute names of what `path` (a module of `package`) imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = parent + (f".{base}" if base else "")
            names.add(base)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


# The core: what loader, node and transport share. Transport may import these and nothing else of ours.
CORE = ["errors", "source", "blocks", "placement", "routing", "credentials", "env", "units", "warming"]


def test_transport_imports_only_core_types():
    core = {f"cachenode.{m}" for m in CORE}
    for path in sorted((ROOT / "transport").glob("*.py")):
        ours = {n for n in _imports(path) if n.startswith("cachenode") and not n.startswith("cachenode.transport")}
        assert ours <= core, f"{path.name} imports {sorted(ours - core)}"


# warming still imports transport.wire (its payloads); moving those is another part of issue 21.
CORE_EXCEPTIONS = {"warming": {"cachenode.transport.wire"}}


def test_core_imports_nothing_from_node_transport_or_client():
    outer = ("cachenode.node", "cachenode.transport", "cachenode.client")
    for name in CORE:
        ours = {n for n in _imports(ROOT / "cachenode" / f"{name}.py", "cachenode")
                if n.startswith(outer)} - CORE_EXCEPTIONS.get(name, set())
        assert not ours, f"cachenode/{name}.py imports {sorted(ours)}"


def test_the_node_service_imports_at_module_level_only():
    """Its parts are injected (compose.py): nothing is built or loaded inside a method."""
    tree = ast.parse((ROOT / "cachenode" / "node" / "service.py").read_text())
    inner = [f"line {n.lineno}" for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not inner, f"service.py imports inside functions at {', '.join(inner)}"
