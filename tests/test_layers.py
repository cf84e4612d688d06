"""Layering: core imports only core, transport only core types, and the loader does not load the daemon."""

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


# Core: what loader, node and transport share; every module at the top of cachenode/ but the front
# doors (the package's lazy loader API, the command line and its option maker, the torch entry, the
# compile cache entry),
# which may import the loader. Transport may import core and nothing else of ours.
FRONT_DOORS = {"__init__", "__main__", "cli", "options", "torch", "compile_cache"}
CORE = sorted(p.stem for p in (ROOT / "cachenode").glob("*.py") if p.stem not in FRONT_DOORS)


def _imports(path: Path, package: str) -> set[str]:
    """Every module `path` (a module of `package`) imports, at any depth, relative ones made absolute."""
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


def test_core_modules_import_only_core():
    """Core (`cachenode/<core>.py`) imports nothing from node, transport, client or any other layer."""
    assert {"errors", "source", "blocks", "placement", "routing", "credentials", "env", "units",
            "warming"} <= set(CORE)
    core = {f"cachenode.{m}" for m in CORE}
    for m in CORE:
        path = ROOT / "cachenode" / f"{m}.py"
        ours = {n for n in _imports(path, "cachenode") if n == "cachenode" or n.startswith("cachenode.")}
        assert ours <= core, f"{path.name} imports {sorted(ours - core)}"


def test_transport_imports_only_core_types():
    core = {f"cachenode.{m}" for m in CORE}
    for path in sorted((ROOT / "transport").glob("*.py")):
        ours = {n for n in _imports(path, "cachenode.transport")
                if n.startswith("cachenode") and not n.startswith("cachenode.transport")}
        assert ours <= core, f"{path.name} imports {sorted(ours - core)}"


def test_loader_side_imports_no_daemon_module():
    """The loader and its front-ends (mount, admin) talk to nodes only over the wire."""
    for path in sorted((ROOT / "client").rglob("*.py")):
        package = ".".join(["cachenode", *path.relative_to(ROOT).parent.parts])
        ours = {n for n in _imports(path, package) if n.startswith(("cachenode.node", "cachenode.store"))}
        assert not ours, f"{path.relative_to(ROOT)} imports {sorted(ours)}"


def test_the_node_service_imports_at_module_level_only():
    """Its parts are injected (compose.py): nothing is built or loaded inside a method."""
    tree = ast.parse((ROOT / "cachenode" / "node" / "service.py").read_text())
    inner = [f"line {n.lineno}" for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not inner, f"service.py imports inside functions at {', '.join(inner)}"


# bench's own tests: they measure through `cachebench` and may import its modules
BENCH_TESTS = {"test_bench.py", "test_simulate.py", "test_soak.py", "test_quickstart.py"}


def test_the_harness_needs_neither_pytest_nor_the_benchmarks():
    """`cachenode.testing` ships in the wheel: it imports no pytest and nothing of `cachenode.bench`;
    among the tests only bench's own import `cachenode.bench`."""
    for path in sorted((ROOT / "cachenode" / "testing").glob("*.py")):
        bad = {n for n in _imports(path, "cachenode.testing") if n.split(".")[0] in ("pytest", "_pytest") or n.startswith("cachenode.bench")}
        assert not bad, f"cachenode/testing/{path.name} imports {sorted(bad)}"
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name not in BENCH_TESTS:
            bad = {n for n in _imports(path, "tests") if n.startswith("cachenode.bench")}
            assert not bad, f"tests/{path.name} imports {sorted(bad)}"
